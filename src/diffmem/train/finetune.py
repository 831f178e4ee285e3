"""Fine-tune a Stable Diffusion-family model on a small captioned set (``diffmem finetune``), the way
diffusers' ``train_text_to_image.py`` (full UNet) and ``train_dreambooth_lora.py`` (peft LoRA on the
UNet's attention projections) do, with the memorization monitor in the loop.

The VAE and text encoder stay frozen: every image is VAE-encoded once (posterior mean × scaling
factor) and every caption embedded once. A step draws a batch of rows, noises the latents at uniform
timesteps of the base model's DDPM schedule, drops captions with probability ``caption_dropout``
(classifier-free guidance) and regresses ε (AdamW, cosine schedule, gradient norm clipped to 1).

Checkpoints (``out/checkpoints/step-K/``) load in plain diffusers: a full fine-tune writes a complete
``StableDiffusionPipeline`` folder; a LoRA fine-tune writes ``pytorch_lora_weights.safetensors`` through
``StableDiffusionPipeline.save_lora_weights``, which ``pipe.load_lora_weights`` reads into the base
model, and ``lora.json`` naming the base by absolute path (so ``diffmem monitor`` can load it; edit it
if the base moves). ``callback(adapter, step, out)`` runs after every optimizer step with the model being trained
(an adapter over the live UNet); it returns True to stop training there. The memorization monitor
is such a callback (:mod:`diffmem.monitor.finetune`)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from diffmem.errors import check
from diffmem.outputs import output_dir, progress, write_json
from diffmem.train import cosine_schedule, update

LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")       # diffusers' DreamBooth-LoRA default


@dataclass(frozen=True)
class Finetune:
    """What to fine-tune: ``steps`` optimizer steps of ``batch_size`` at ``lr``; ``lora_rank`` 0 trains
    the full UNet, R > 0 a peft LoRA of rank R (alpha = R) on :data:`LORA_TARGETS`; ``caption_dropout``;
    a checkpoint every ``checkpoint_every`` steps (0: none); ``seed``."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    lora_rank: int = 0
    caption_dropout: float = 0.1
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self):
        check(self.steps >= 1 and self.batch_size >= 1, f"steps={self.steps}, batch_size={self.batch_size}: "
                                                        f"both must be >= 1")
        check(self.lr > 0 and self.lora_rank >= 0, f"lr={self.lr}, lora_rank={self.lora_rank}: lr > 0, rank >= 0")
        check(0 <= self.caption_dropout < 1, f"caption_dropout={self.caption_dropout}: must be in [0, 1)")
        check(self.checkpoint_every >= 0, f"checkpoint_every={self.checkpoint_every}: must be >= 0")


def _pipeline(base: str | os.PathLike):
    """The base ``StableDiffusionPipeline`` from a local folder (safetensors only)."""
    from diffusers import StableDiffusionPipeline
    from diffmem.models.load import detect_family, quiet_libraries
    check(detect_family(base) == "stable_diffusion", f"base={base}: not a Stable Diffusion-family model folder")
    quiet_libraries()
    return StableDiffusionPipeline.from_pretrained(base, local_files_only=True, use_safetensors=True,
                                                   safety_checker=None, requires_safety_checker=False)


def add_lora(unet, rank: int, seed: int):
    """Add a peft LoRA adapter of ``rank`` to ``unet`` in place (A initialized from ``seed``, B = 0, so
    the model is unchanged at step 0); returns its trainable parameters."""
    from peft import LoraConfig
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=list(LORA_TARGETS)))
    return [p for p in unet.parameters() if p.requires_grad]


def save_checkpoint(folder: Path, pipe, base: str | os.PathLike | None = None) -> None:
    """A checkpoint plain diffusers loads: the whole pipeline, or with ``base`` (a LoRA fine-tune of that
    model folder) the LoRA weights alone, plus ``lora.json`` naming the base (for ``diffmem monitor``)."""
    if base is not None:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict
        from diffmem.models.load import LORA
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
        type(pipe).save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
        write_json(Path(folder) / LORA, {"base": str(Path(base).resolve()), "rank": pipe.unet.peft_config["default"].r})
    else:
        pipe.save_pretrained(folder, safe_serialization=True)


def finetune(base: str | os.PathLike, images: torch.Tensor, captions: list[str], out: str | os.PathLike,
             cfg: Finetune = Finetune(), callback: Callable | None = None, quiet: bool = False) -> dict:
    """Fine-tune ``base`` on ``images`` (N, 3, H, W) in [-1, 1] with ``captions`` (N,) and write ``out``
    (the fine-tuned pipeline or LoRA weights, ``checkpoints/``, ``finetune.json``); returns the
    ``finetune.json`` object (``stopped_at`` the step a ``callback`` stopped at, else None)."""
    from diffusers import DDPMScheduler
    from diffmem.probe.adapters import StableDiffusionAdapter
    check(len(images) == len(captions) and len(images) >= 1, f"images: {len(images)} images, {len(captions)} captions")
    pipe = _pipeline(base)
    unet, vae, text, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    adapter = StableDiffusionAdapter(unet, vae, text, tok, pipe.scheduler)         # the callback's view
    size, channels = adapter.image_size, adapter.image_channels
    check(tuple(images.shape[1:]) == (channels, size, size),
          f"images: shape {tuple(images.shape[1:])} does not match the model's input ({channels}, {size}, {size})")
    for m in (vae, text):
        m.requires_grad_(False)
    lora = cfg.lora_rank > 0
    if lora:
        unet.requires_grad_(False)
        params = add_lora(unet, cfg.lora_rank, cfg.seed)
    else:
        params = list(unet.parameters())
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
        lat = lat * vae.config.scaling_factor                                          # (N, 4, h, w)
        ids = tok(list(captions) + [""], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        emb = text(ids)[0]                                                             # (N + 1, L, D)
        emb, null = emb[:-1], emb[-1:]
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    lrs = cosine_schedule(opt, cfg.steps)
    T = noise.config.num_train_timesteps
    record = {"base": str(base), "n_images": len(images), "lora": lora, "settings": asdict(cfg),
              "trainable_parameters": sum(p.numel() for p in params), "checkpoints": []}
    out = Path(out)
    t0, losses, stopped = time.time(), [], None
    with output_dir(out) as tmp:
        unet.train()
        bar = progress(range(1, cfg.steps + 1), desc="finetune" + (f" (LoRA r={cfg.lora_rank})" if lora else ""),
                       disable=quiet)
        for k in bar:
            r = torch.randint(len(lat), (cfg.batch_size,), generator=g)               # (B,)
            z0 = lat[r]                                                              # (B, 4, h, w)
            eps = torch.randn(z0.shape, generator=g)                                 # (B, 4, h, w)
            t = torch.randint(0, T, (cfg.batch_size,), generator=g)                  # (B,)
            drop = (torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout)[:, None, None]
            cond = torch.where(drop, null.expand(cfg.batch_size, -1, -1), emb[r])    # (B, L, D)
            loss = F.mse_loss(unet(noise.add_noise(z0, eps, t), t, encoder_hidden_states=cond).sample, eps)
            losses.append(update(opt, lrs, loss, clip=1.0))
            if cfg.checkpoint_every and k % cfg.checkpoint_every == 0:
                with output_dir(out / "checkpoints" / f"step-{k:06d}") as folder:   # kept if training dies
                    save_checkpoint(folder, pipe, base if lora else None)
                record["checkpoints"].append(k)
            if callback is not None and callback(adapter, k, out):
                stopped = k
                break
        bar.close()
        unet.eval()
        save_checkpoint(tmp, pipe, base if lora else None)
        record.update(steps_done=stopped or cfg.steps, stopped_at=stopped, seconds=time.time() - t0,
                      final_loss=float(np.mean(losses[-50:])))
        write_json(tmp / "finetune.json", record)
    return record
