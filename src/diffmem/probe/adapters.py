"""Model adapters: the one seam between models and everything that probes or steers them.

An adapter knows how to bring a pixel image into model space (``prepare``), noise it at a timestep
with a seeded generator per image (``noise``), supply null or real conditioning, run the denoiser
once (``denoise``), and name its layers. Timesteps are the scheduler's integer timesteps (0…999
for a 1000-step DDPM schedule) for diffusers families; the theory family uses the noise level σ.
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable, Sequence

import torch
from torch import nn

from diffmem.errors import DiffmemError, check
from diffmem.probe.capture import count_calls, output_shapes

Generators = Sequence[torch.Generator]


def gaussian_like(z: torch.Tensor, generators: Generators) -> torch.Tensor:
    """Standard normal noise shaped like z (B, ...) with row b drawn from ``generators[b]``."""
    check(len(generators) == z.shape[0], f"noise: {len(generators)} generators for a batch of {z.shape[0]}")
    return torch.stack([torch.randn(z.shape[1:], generator=g, dtype=torch.float32) for g in generators]
                       ).to(z.device, z.dtype)


class Adapter:
    """Base class. Subclasses set ``family``, ``denoiser``, ``image_size``, ``image_channels``,
    ``default_layer``, ``default_pool``, ``default_t`` and implement the methods below."""

    family: str = "custom"
    denoiser: nn.Module
    image_size: int
    image_channels: int
    default_pool: str = "auto"
    default_t: float = 10
    cfg_order: str = "uncond_cond"      # batch order of classifier-free guidance in this family

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def default_layer(self) -> str:
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel images (B, C, H, W) in [-1, 1] → model-space inputs z."""
        return x.to(self.device)

    def noise(self, z: torch.Tensor, t: float, generators: Generators) -> torch.Tensor:
        """z_t at timestep t, noise row b from generators[b]."""
        raise NotImplementedError

    def denoise(self, z_t: torch.Tensor, t: float, cond=None) -> torch.Tensor:
        """One denoiser call; returns the ε (or x₀ for the theory family) prediction."""
        raise NotImplementedError

    def predict_eps(self, z_t: torch.Tensor, t: float, cond=None) -> torch.Tensor:
        """The noise prediction ε̂ (B, …) whatever the denoiser's output parameterization."""
        return self.denoise(z_t, t, cond)

    def noise_std(self, t: float) -> float:
        """Standard deviation σ_t of the noise in z_t (score = −ε/σ_t); t itself for noise-level families."""
        return float(t)

    def null_condition(self, batch: int):
        """The unconditional input (empty prompt, null class), or None for unconditional models."""
        return None

    def condition(self, values: Sequence) -> object:
        """Conditioning for a batch of class labels (class-conditional) or prompts (text-to-image)."""
        raise DiffmemError(f"{self.family}: this model takes no condition")

    def validate_t(self, t: float) -> None:
        check(t == t, f"t={t}: must be a number")

    # -- layers ---------------------------------------------------------------------------
    def dummy_forward(self) -> Callable[[], object]:
        """A zero-argument callable running one batch-1 forward on a zero input."""
        z = self.prepare(torch.zeros(1, self.image_channels, self.image_size, self.image_size))
        t = self.default_t
        return lambda: self.denoise(z, t, self.null_condition(1))

    @cached_property
    def call_counts(self) -> dict[str, int]:
        """Calls per forward of every named module (one dummy forward, cached)."""
        with torch.no_grad():
            return count_calls(self.denoiser, self.dummy_forward())

    def layers(self) -> dict[str, list[tuple[int, ...]]]:
        """Every hookable module name → output shape of each of its calls (batch 1)."""
        with torch.no_grad():
            return output_shapes(self.denoiser, self.dummy_forward())


class _SchedulerNoise:
    """DDPM-style forward noising z_t = √ᾱ_t z + √(1−ᾱ_t) ε via the scheduler's ``add_noise``."""

    scheduler: object

    def validate_t(self, t: float) -> None:
        n = self.scheduler.config.num_train_timesteps
        check(float(t).is_integer() and 0 <= t < n, f"t={t}: must be an integer timestep in [0, {n - 1}]")

    def noise(self, z, t, generators):
        self.validate_t(t)
        eps = gaussian_like(z, generators)
        ts = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
        return self.scheduler.add_noise(z, eps, ts)

    def noise_std(self, t):
        self.validate_t(t)
        return float(torch.sqrt(1 - self.scheduler.alphas_cumprod[int(t)]))


def _ddpm(scheduler):
    """A DDPMScheduler with the same training schedule (``add_noise`` alike for every family)."""
    from diffusers import DDPMScheduler
    return DDPMScheduler.from_config(scheduler.config) if scheduler is not None else DDPMScheduler()


class UNet2DAdapter(_SchedulerNoise, Adapter):
    """diffusers ``UNet2DModel`` in pixel space, optionally class-conditional.

    The null class (classifier-free guidance) is ``null_class`` (default: the last class embedding).
    """

    family = "unet2d"
    default_pool = "spatial_max"

    def __init__(self, unet, scheduler=None, null_class: int | None = None):
        self.denoiser = unet.eval()
        self.scheduler = _ddpm(scheduler)
        cfg = unet.config
        self.image_size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.image_channels = cfg.in_channels
        self.num_class_embeds = cfg.num_class_embeds
        self.null_class = (self.num_class_embeds - 1 if null_class is None else null_class) \
            if self.num_class_embeds else None

    @property
    def default_layer(self) -> str:
        n = len(self.denoiser.up_blocks[0].resnets)
        return f"up_blocks.0.resnets.{n - 1}"

    def denoise(self, z_t, t, cond=None):
        cond = self.null_condition(z_t.shape[0]) if cond is None else cond
        return self.denoiser(z_t, t, class_labels=cond).sample

    def null_condition(self, batch):
        if self.null_class is None:
            return None
        return torch.full((batch,), self.null_class, dtype=torch.long, device=self.device)

    def condition(self, values):
        if self.num_class_embeds is None:
            return super().condition(values)
        labels = torch.as_tensor([int(v) for v in values], dtype=torch.long, device=self.device)
        check(bool(((labels >= 0) & (labels < self.num_class_embeds)).all()),
              f"class labels {sorted(set(labels.tolist()))}: must lie in [0, {self.num_class_embeds - 1}]")
        return labels


class StableDiffusionAdapter(_SchedulerNoise, Adapter):
    """Stable Diffusion: ``UNet2DConditionModel`` + ``AutoencoderKL`` + CLIP text encoder/tokenizer.

    ``prepare`` VAE-encodes (posterior mean × scaling factor); the null condition is the empty
    prompt's embedding, computed once and cached. Default layer: the paper's
    ``up_blocks.0.resnets.<last>.nonlinearity`` (last call), spatial max.
    """

    family = "stable_diffusion"
    default_pool = "spatial_max"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler=None):
        self.denoiser, self.vae, self.text_encoder = unet.eval(), vae.eval(), text_encoder.eval()
        self.tokenizer = tokenizer
        self.scheduler = _ddpm(scheduler)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = unet.config.sample_size
        self.latent_size = size if isinstance(size, int) else size[0]
        self.image_size = self.latent_size * self.vae_scale
        self.image_channels = vae.config.in_channels
        self._empty = None

    @property
    def default_layer(self) -> str:
        n = len(self.denoiser.up_blocks[0].resnets)
        return f"up_blocks.0.resnets.{n - 1}.nonlinearity"

    @torch.no_grad()
    def prepare(self, x):
        z = self.vae.encode(x.to(self.device)).latent_dist.mean
        return z * self.vae.config.scaling_factor

    def dummy_forward(self):
        z = torch.zeros(1, self.denoiser.config.in_channels, self.latent_size, self.latent_size,
                        device=self.device)
        return lambda: self.denoise(z, self.default_t, self.null_condition(1))

    @torch.no_grad()
    def _encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]                                  # (B, L, D)

    def null_condition(self, batch):
        if self._empty is None:
            self._empty = self._encode_prompts([""])
        return self._empty.expand(batch, -1, -1)

    def condition(self, values):
        return self._encode_prompts([str(v) for v in values])

    def denoise(self, z_t, t, cond=None):
        cond = self.null_condition(z_t.shape[0]) if cond is None else cond
        return self.denoiser(z_t, t, encoder_hidden_states=cond).sample


class DiTAdapter(_SchedulerNoise, Adapter):
    """diffusers ``DiTTransformer2DModel`` (+ ``AutoencoderKL`` when latent), class-conditional.

    Null class = ``num_embeds_ada_norm``; learned-σ outputs are cut to the ε half. Default layer:
    the middle transformer block, token mean. diffusers' DiT pipeline orders guidance batches
    [cond, uncond].
    """

    family = "dit"
    default_pool = "token_mean"
    cfg_order = "cond_uncond"

    def __init__(self, transformer, scheduler=None, vae=None):
        self.denoiser, self.vae = transformer.eval(), (vae.eval() if vae is not None else None)
        self.scheduler = _ddpm(scheduler)
        cfg = transformer.config
        self.latent_size = cfg.sample_size
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_size = cfg.sample_size * self.vae_scale
        self.image_channels = vae.config.in_channels if vae is not None else cfg.in_channels
        self.num_classes = cfg.num_embeds_ada_norm

    @property
    def default_layer(self) -> str:
        return f"transformer_blocks.{len(self.denoiser.transformer_blocks) // 2}"

    @torch.no_grad()
    def prepare(self, x):
        x = x.to(self.device)
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def dummy_forward(self):
        z = torch.zeros(1, self.denoiser.config.in_channels, self.latent_size, self.latent_size,
                        device=self.device)
        return lambda: self.denoise(z, self.default_t, self.null_condition(1))

    def denoise(self, z_t, t, cond=None):
        cond = self.null_condition(z_t.shape[0]) if cond is None else cond
        ts = torch.full((z_t.shape[0],), int(t), dtype=torch.long, device=z_t.device)
        out = self.denoiser(z_t, timestep=ts, class_labels=cond).sample
        return out[:, :z_t.shape[1]]

    def null_condition(self, batch):
        return torch.full((batch,), self.num_classes, dtype=torch.long, device=self.device)

    def condition(self, values):
        labels = torch.as_tensor([int(v) for v in values], dtype=torch.long, device=self.device)
        check(bool(((labels >= 0) & (labels < self.num_classes)).all()),
              f"class labels {sorted(set(labels.tolist()))}: must lie in [0, {self.num_classes - 1}]")
        return labels


class TheoryAdapter(Adapter):
    """The theory lab's ReLU-DAE / time-conditioned ReLU diffusion on flattened images.

    Timesteps are noise levels σ (z_t = z + σε); the hooked layer is ``act`` (relu(Wᵀx), (B, p)).
    """

    family = "theory"
    default_pool = "flatten"
    default_t = 0.1

    def __init__(self, model: nn.Module, image_shape: tuple[int, int, int]):
        self.denoiser = model.eval()
        self.image_channels, self.image_size = image_shape[0], image_shape[1]
        self.mean = getattr(model, "mean", None)

    @property
    def default_layer(self) -> str:
        return "act"

    def validate_t(self, t):
        check(t == t and t > 0, f"t={t}: the theory family's timestep is a noise level σ > 0")

    def prepare(self, x):
        z = x.reshape(x.shape[0], -1).to(self.device)
        return z - self.mean if self.mean is not None else z

    def noise(self, z, t, generators):
        self.validate_t(t)
        return z + float(t) * gaussian_like(z, generators)

    def predict_eps(self, z_t, t, cond=None):
        return (z_t - self.denoise(z_t, t, cond)) / float(t)               # the model predicts x₀

    def denoise(self, z_t, t, cond=None):
        if hasattr(self.denoiser, "g"):
            return self.denoiser(z_t, torch.full((z_t.shape[0],), float(t), device=z_t.device))
        return self.denoiser(z_t)


class CustomAdapter(Adapter):
    """Any ``nn.Module`` with a user call ``forward(module, z_t, t, cond) → output``.

    ``prepare`` defaults to the identity and noising to z + t·ε (t a noise level).
    """

    family = "custom"

    def __init__(self, module: nn.Module, forward: Callable, image_size: int, image_channels: int,
                 default_layer: str, prepare: Callable | None = None, default_t: float = 0.1,
                 default_pool: str = "auto"):
        self.denoiser = module.eval()
        self._forward, self._prepare = forward, prepare
        self.image_size, self.image_channels = image_size, image_channels
        self._default_layer, self.default_t, self.default_pool = default_layer, default_t, default_pool

    @property
    def default_layer(self) -> str:
        return self._default_layer

    def prepare(self, x):
        x = x.to(self.device)
        return self._prepare(x) if self._prepare else x

    def noise(self, z, t, generators):
        return z + float(t) * gaussian_like(z, generators)

    def denoise(self, z_t, t, cond=None):
        return self._forward(self.denoiser, z_t, t, cond)
