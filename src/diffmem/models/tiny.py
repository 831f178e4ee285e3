"""Tiny random-weight models of every family, built in code (no downloads), for tests and benches.

Each ``save_tiny_*`` writes a folder that :func:`diffmem.models.load_adapter` loads like a real
model. Weights come from ``torch.manual_seed(seed)`` inside a forked RNG, so builds are
reproducible without touching the caller's global RNG state.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from diffmem.models.load import quiet_libraries

quiet_libraries()
_TOKENS = [chr(c) for c in range(33, 127)]



def tiny_unet2d(sample_size: int = 16, channels: int = 1, num_classes: int | None = None, seed: int = 0,
                widths: tuple[int, int] = (16, 32)):
    """A ~0.1M-parameter ``UNet2DModel`` (``widths``: block channels); class-conditional with
    ``num_classes`` + 1 (null) embeddings."""
    from diffusers import UNet2DModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                           block_out_channels=widths, layers_per_block=1, norm_num_groups=8,
                           down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"),
                           num_class_embeds=None if num_classes is None else num_classes + 1).eval()


def _tiny_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                         norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2).eval()


def _tiny_tokenizer(folder: Path):
    """A character-level ``CLIPTokenizer`` (every printable ASCII character a token, no merges)."""
    from transformers import CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for t in _TOKENS:
        vocab.setdefault(t, len(vocab))
        vocab.setdefault(t + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def save_tiny_unet2d(path: str | os.PathLike, num_classes: int | None = 10, seed: int = 0,
                     sample_size: int = 16, widths: tuple[int, int] = (16, 32)) -> Path:
    """A tiny class-conditional pixel-space DDPM pipeline folder (unet + scheduler)."""
    from diffusers import DDPMPipeline, DDPMScheduler
    path = Path(path)
    DDPMPipeline(unet=tiny_unet2d(sample_size, 1, num_classes, seed, widths), scheduler=DDPMScheduler()
                 ).save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_sd(path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny Stable Diffusion pipeline folder: 8×8×4 latents, 16×16 RGB images."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=2, sample_size=8,
                                    in_channels=4, out_channels=4, norm_num_groups=8, cross_attention_dim=16,
                                    attention_head_dim=4,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
        vae = _tiny_vae()
        text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                            intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                            vocab_size=256, max_position_embeddings=16)).eval()
    tok = _tiny_tokenizer(path)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_dit(path: str | os.PathLike, seed: int = 0, latent: bool = True) -> Path:
    """A tiny DiT folder: a ``DiTPipeline`` with VAE (latent) or a pixel-space transformer."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        channels = 4 if latent else 1
        dit = DiTTransformer2DModel(sample_size=8 if latent else 16, patch_size=2, in_channels=channels,
                                    out_channels=2 * channels, num_layers=4, attention_head_dim=8,
                                    num_attention_heads=2, norm_num_groups=8, num_embeds_ada_norm=10).eval()
        vae = _tiny_vae() if latent else None
    if latent:
        DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler()).save_pretrained(path, safe_serialization=True)
    else:
        dit.save_pretrained(path, safe_serialization=True)
        DDIMScheduler().save_pretrained(path / "scheduler")
    return path


SAVERS = {"unet2d": save_tiny_unet2d, "stable_diffusion": save_tiny_sd, "dit": save_tiny_dit}
