"""Model adapters: the one seam between models and everything that probes, samples or steers them.

All family knowledge lives here. An adapter brings a pixel image into model space (``prepare``)
and back (``decode``), noises it at a timestep with a seeded generator per image (``noise``), runs
the denoiser once (``denoise`` / ``predict_eps``), supplies conditioning through one API
(``condition_kind``, ``conditions``, ``condition``, ``null_condition``), builds its sampler
(``sampler``), and names its layers, its detection defaults (``default_layer``, ``default_t``,
``default_pool``) and its steering recipe (``steering_layers``, ``steering_pool``).
Timesteps are the scheduler's integer timesteps (0…999 for a 1000-step DDPM schedule) for diffusers
families; the theory family uses the noise level σ.
"""

from __future__ import annotations

import math
import re
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from diffmem.errors import DiffmemError, check, check_fits
from diffmem.probe.capture import count_calls, output_shapes

Generators = Sequence[torch.Generator]


def gaussian_like(z: torch.Tensor, generators: Generators) -> torch.Tensor:
    """Standard normal noise shaped like z (B, ...) with row b drawn from ``generators[b]``."""
    check(len(generators) == z.shape[0], f"noise: {len(generators)} generators for a batch of {z.shape[0]}")
    return torch.stack([torch.randn(z.shape[1:], generator=g, dtype=torch.float32) for g in generators]
                       ).to(z.device, z.dtype)


class DDIMSampler:
    """DDIM (η = 0) or ancestral DDPM-style (η = 1) steps of a diffusers noise schedule."""

    def __init__(self, scheduler, steps: int, eta: float):
        from diffusers import DDIMScheduler
        total = scheduler.config.num_train_timesteps
        check(1 <= steps <= total, f"steps={steps}: must be in [1, {total}]")
        self.sched = DDIMScheduler.from_config(scheduler.config)
        self.sched.set_timesteps(steps)
        self.timesteps = [int(t) for t in self.sched.timesteps]
        self.eta, self.init_scale = eta, float(self.sched.init_noise_sigma)

    def step(self, eps: torch.Tensor, i: int, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self.sched.step(eps, self.timesteps[i], x, eta=self.eta, variance_noise=noise).prev_sample


class EulerSigmaSampler:
    """Euler steps of the probability-flow ODE dx/dσ = ε̂ on a geometric σ grid (noise-level families),
    then one final denoising step x − σ_min ε̂."""

    def __init__(self, steps: int, sigma_min: float, sigma_max: float):
        check(steps >= 1, f"steps={steps}: must be >= 1")
        grid = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps + 1))
        self.timesteps = [float(s) for s in grid]
        self.eta, self.init_scale = 0.0, sigma_max

    def step(self, eps: torch.Tensor, i: int, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        s = self.timesteps[i]
        if i + 1 < len(self.timesteps):
            return x + (self.timesteps[i + 1] - s) * eps
        return x - s * eps


class Adapter:
    """Base class. Subclasses set ``family``, ``denoiser``, ``image_size``, ``image_channels``,
    ``default_layer``, ``default_pool``, ``default_t`` and implement the methods below.

    ``path`` and ``record`` (a :class:`~diffmem.models.record.ModelRecord` or None) are given to the
    constructor; nothing outside sets attributes on an adapter."""

    family: str = "custom"
    denoiser: nn.Module
    image_size: int
    image_channels: int
    default_pool: str = "auto"
    default_t: float = 10
    t_grid: tuple[float, ...] = (10, 20, 50, 100, 200)   # timesteps tuned over (bench, fusion detector, monitor)
    # the modules worth ranking as layers (candidate_layers); this default takes any family's names
    candidate_pattern = r"^act$|(^|\.)(resnets\.\d+(\.nonlinearity)?|transformer_blocks\.\d+|mid_block)$"
    t_convention: str = "timestep"      # what t means: a scheduler "timestep" or a noise level "sigma"
    cfg_order: str = "uncond_cond"      # batch order of classifier-free guidance in this family
    condition_kind: str | None = None   # "class" | "prompt" | None
    num_classes: int | None = None      # real classes (the null class excluded) when condition_kind == "class"
    steering_pool: str = "spatial_mean"

    def __init__(self, path: str | Path | None = None, record=None):
        self.path = None if path is None else Path(path)
        self.record = record

    # -- device ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def modules(self) -> list[nn.Module]:
        """Every network of the model (denoiser, VAE, text encoder, …)."""
        return [self.denoiser]

    def to(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "Adapter":
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        self.__dict__.pop("_null_cache", None)
        return self

    # -- model space ----------------------------------------------------------------------
    @property
    def default_layer(self) -> str:
        raise NotImplementedError

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one model-space input (C', H', W'), or (d,) for flattened families."""
        return (self.image_channels, self.image_size, self.image_size)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel images (B, C, H, W) in [-1, 1] → model-space inputs z."""
        return x.to(self.device, self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space z → pixel images (B, C, H, W) in [-1, 1], float32 on the CPU."""
        return z.float().clamp(-1, 1).cpu()

    @torch.no_grad()
    def round_trip(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """``decode(prepare(x))`` of pixel images x (N, C, H, W): what the model can reproduce of them at
        best (the VAE's reconstruction for latent families, x itself for pixel families). Exact copy
        labels of generated images compare against these."""
        return torch.cat([self.decode(self.prepare(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])

    def noise(self, z: torch.Tensor, t: float, generators: Generators) -> torch.Tensor:
        """z_t at timestep t, noise row b from generators[b]."""
        return self.add_noise(z, t, gaussian_like(z, generators))

    def add_noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> torch.Tensor:
        """z_t at timestep t for the given standard normal noise eps (shaped like z); t is checked."""
        self.validate_t(t)
        return z + float(t) * eps

    def denoise(self, z_t: torch.Tensor, t: float, cond=None) -> torch.Tensor:
        """One denoiser call; returns the ε (or x₀ for the theory family) prediction."""
        raise NotImplementedError

    def predict_eps(self, z_t: torch.Tensor, t: float, cond=None) -> torch.Tensor:
        """The noise prediction ε̂ (B, …) whatever the denoiser's output parameterization."""
        return self.denoise(z_t, t, cond)

    def noise_std(self, t: float) -> float:
        """Standard deviation σ_t of the noise in z_t (score = −ε/σ_t); t itself for noise-level families."""
        return float(t)

    def signal_scale(self, t: float) -> float:
        """The scale of the clean signal in z_t = signal_scale · z + noise_std · ε; 1 for noise-level families."""
        return 1.0

    residual_rule: str = "the family's default t"    # how residual_t is chosen, in words

    @property
    def residual_t(self) -> float:
        """The timestep of the label-free residual score (:mod:`diffmem.detect.labelfree`): ``default_t``
        here; families with a noise schedule read it off the schedule (:data:`RESIDUAL_SNR`)."""
        return self.default_t

    def validate_t(self, t: float) -> None:
        check(t == t, f"t={t}: must be a number")

    def sampler(self, steps: int, eta: float = 0.0):
        """The sampler of this family (``timesteps``, ``init_scale``, ``step``)."""
        raise DiffmemError(f"{self.family}: this model cannot be sampled")

    # -- conditioning ---------------------------------------------------------------------
    def null_condition(self, batch: int):
        """The unconditional input (empty prompt, null class), or None for unconditional models."""
        return None

    def condition(self, values: Sequence) -> object:
        """Conditioning for a batch of class labels (class-conditional) or prompts (text-to-image)."""
        raise DiffmemError(f"{self.family}: this model takes no condition")

    def check_count(self, n: int) -> None:
        """Refuse, before any allocation, n samples whose latents and images alone would not fit in memory."""
        per = math.prod(self.latent_shape) + self.image_channels * self.image_size ** 2
        check_fits(4.0 * n * per + 64.0 * n, f"n={n} samples of {'×'.join(map(str, self.latent_shape))}")

    def conditions(self, n: int, classes: Sequence[int] | None = None,
                   prompts: Sequence[str] | None = None) -> list | None:
        """n condition values (cycled) for sampling: class labels (default: every class in turn),
        prompts (default: None = unconditional), or None for unconditional models. Wrong kinds and
        out-of-range classes are errors naming the parameter."""
        self.check_count(n)
        kind = self.condition_kind
        if classes is not None:
            check(kind == "class", f"classes={','.join(map(str, classes))}: this {self.family} model is not class-conditional")
            vals = [int(c) for c in classes]
            check(bool(vals) and all(0 <= c < self.num_classes for c in vals),
                  f"classes={','.join(map(str, vals))}: each class must lie in [0, {self.num_classes - 1}]")
            return [vals[j % len(vals)] for j in range(n)]
        if prompts is not None:
            check(kind == "prompt", f"prompts=({len(prompts)} given): this {self.family} model is not prompt-conditioned")
            check(len(prompts) > 0, "prompts=[]: no prompts given")
            return [str(prompts[j % len(prompts)]) for j in range(n)]
        if kind == "class":
            return [j % self.num_classes for j in range(n)]
        return None

    # -- steering recipe ------------------------------------------------------------------
    def steering_layers(self) -> list[str]:
        """Layers whose outputs a concept vector is added to (the released recipe mapped to the family)."""
        return [self.default_layer]

    # -- weights --------------------------------------------------------------------------
    @property
    def bottleneck(self) -> str:
        """The module whose weights the training monitor's stable rank reads."""
        return self.default_layer.split("@")[0]

    def bottleneck_weights(self) -> dict[str, torch.Tensor]:
        """{parameter name: weight (out, …)} of every matrix or kernel under :attr:`bottleneck`."""
        module = dict(self.denoiser.named_modules())[self.bottleneck]
        return {f"{self.bottleneck}.{n}": w for n, w in module.named_parameters() if w.ndim >= 2}

    # -- layers ---------------------------------------------------------------------------
    def dummy_forward(self) -> Callable[[], object]:
        """A zero-argument callable running one batch-1 forward on a zero input."""
        x = torch.zeros(1, self.image_channels, self.image_size, self.image_size, device=self.device)
        with torch.no_grad():
            z = self.prepare(x)                                  # model space, whatever prepare does
        return lambda: self.denoise(z, self.default_t, self.null_condition(1))

    @cached_property
    def call_counts(self) -> dict[str, int]:
        """Calls per forward of every named module (one dummy forward, cached)."""
        with torch.no_grad():
            return count_calls(self.denoiser, self.dummy_forward())

    def layers(self) -> dict[str, list[tuple[int, ...]]]:
        """Every hookable module name → output shape of each of its calls (batch 1)."""
        with torch.no_grad():
            return output_shapes(self.denoiser, self.dummy_forward())

    def candidate_layers(self) -> list[str]:
        """Layers worth ranking (detectors, the bench, the monitor): every module whose name matches the
        family's ``candidate_pattern`` and whose (last-call) output has as many dimensions as the default
        layer's; the default layer alone when none does."""
        shapes = self.layers()
        ndim = len(shapes[self.default_layer.split("@")[0]][-1])
        pattern = re.compile(self.candidate_pattern)
        names = [n for n, s in shapes.items() if pattern.search(n) and len(s[-1]) == ndim]
        return names or [self.default_layer]


UNET_CANDIDATES = r"(^|\.)(resnets\.\d+(\.nonlinearity)?|mid_block)$"   # every resnet, its nonlinearity, the mid block


# The label-free residual's noise level, as a signal-to-noise ratio ᾱ_t/(1 − ᾱ_t): t = 92 on the linear
# 1e-4…0.02 schedule, 188 on the cosine one. Chosen on the model zoo's seed 0 by worst-case AUROC over the
# five models (t = 10 ranks copies below non-copies on the text-to-image model); `docs/results.md`.
RESIDUAL_SNR = 10.0


class _SchedulerNoise:
    """DDPM-style forward noising z_t = √ᾱ_t z + √(1−ᾱ_t) ε via the scheduler's ``add_noise``."""

    scheduler: object
    residual_rule = f"signal-to-noise ratio {RESIDUAL_SNR:g}"

    @property
    def residual_t(self) -> int:
        """The training timestep whose ᾱ_t/(1 − ᾱ_t) is nearest :data:`RESIDUAL_SNR` (read off the schedule
        alone: no image, no label)."""
        ac = self.scheduler.alphas_cumprod.double()
        return int(torch.argmin((torch.log(ac / (1 - ac)) - math.log(RESIDUAL_SNR)).abs()))

    def validate_t(self, t: float) -> None:
        n = self.scheduler.config.num_train_timesteps
        check(float(t).is_integer() and 0 <= t < n, f"t={t}: must be an integer timestep in [0, {n - 1}]")

    def add_noise(self, z, t, eps):
        self.validate_t(t)
        ts = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
        return self.scheduler.add_noise(z, eps, ts)

    def noise_std(self, t):
        self.validate_t(t)
        return float(torch.sqrt(1 - self.scheduler.alphas_cumprod[int(t)]))

    def signal_scale(self, t):
        self.validate_t(t)
        return float(torch.sqrt(self.scheduler.alphas_cumprod[int(t)]))

    def sampler(self, steps, eta=0.0):
        return DDIMSampler(self.scheduler, steps, eta)


def _ddpm(scheduler):
    """A DDPMScheduler with the same training schedule (``add_noise`` alike for every family)."""
    from diffusers import DDPMScheduler
    return DDPMScheduler.from_config(scheduler.config) if scheduler is not None else DDPMScheduler()


def _up_block_recipe(denoiser) -> list[str]:
    """Every resnet of ``up_blocks.0`` and the first two of ``up_blocks.1`` (SD v1.4's released recipe:
    up_blocks.0.resnets.0–2, up_blocks.1.resnets.0–1)."""
    up = denoiser.up_blocks
    names = [f"up_blocks.0.resnets.{i}" for i in range(len(up[0].resnets))]
    if len(up) > 1:
        names += [f"up_blocks.1.resnets.{i}" for i in range(min(2, len(up[1].resnets)))]
    return names


def _class_labels(adapter: Adapter, values) -> torch.Tensor:
    labels = torch.as_tensor([int(v) for v in values], dtype=torch.long, device=adapter.device)
    check(bool(((labels >= 0) & (labels < adapter.num_classes)).all()),
          f"class labels {sorted(set(labels.tolist()))}: must lie in [0, {adapter.num_classes - 1}]")
    return labels


class UNet2DAdapter(_SchedulerNoise, Adapter):
    """diffusers ``UNet2DModel`` in pixel space, optionally class-conditional.

    Classes 0…K−1 are real; the null class (classifier-free guidance) is ``null_class`` (default:
    the last class embedding, K).
    """

    family = "unet2d"
    candidate_pattern = UNET_CANDIDATES
    default_pool = "spatial_max"

    def __init__(self, unet, scheduler=None, null_class: int | None = None, path=None, record=None):
        super().__init__(path, record)
        self.denoiser = unet.eval()
        self.scheduler = _ddpm(scheduler)
        cfg = unet.config
        self.image_size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.image_channels = cfg.in_channels
        embeds = cfg.num_class_embeds
        self.null_class = (embeds - 1 if null_class is None else null_class) if embeds else None
        self.condition_kind = "class" if embeds else None
        self.num_classes = embeds - 1 if embeds else None

    @property
    def default_layer(self) -> str:
        n = len(self.denoiser.up_blocks[0].resnets)
        return f"up_blocks.0.resnets.{n - 1}"

    def steering_layers(self):
        return _up_block_recipe(self.denoiser)

    bottleneck = "mid_block"

    def denoise(self, z_t, t, cond=None):
        cond = self.null_condition(z_t.shape[0]) if cond is None else cond
        return self.denoiser(z_t, t, class_labels=cond).sample

    def null_condition(self, batch):
        if self.null_class is None:
            return None
        return torch.full((batch,), self.null_class, dtype=torch.long, device=self.device)

    def condition(self, values):
        if self.condition_kind is None:
            return super().condition(values)
        return _class_labels(self, values)


class _Latent:
    """VAE-encoded families: posterior mean × scaling factor, decoded back to [-1, 1] pixels."""

    vae: nn.Module
    latent_channels: int
    latent_size: int

    @property
    def latent_shape(self):
        return (self.latent_channels, self.latent_size, self.latent_size)

    @torch.no_grad()
    def prepare(self, x):
        if self.vae is None:
            return x.to(self.device, self.dtype)
        z = self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mean
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, z):
        if self.vae is not None:
            z = self.vae.decode(z.to(self.device, self.dtype) / self.vae.config.scaling_factor).sample
        return z.float().clamp(-1, 1).cpu()


class StableDiffusionAdapter(_Latent, _SchedulerNoise, Adapter):
    """Stable Diffusion: ``UNet2DConditionModel`` + ``AutoencoderKL`` + CLIP text encoder/tokenizer.

    ``prepare`` VAE-encodes (posterior mean × scaling factor); the null condition is the empty
    prompt's embedding, computed once and cached. Default layer: the paper's
    ``up_blocks.0.resnets.<last>.nonlinearity`` (last call), spatial max.
    """

    family = "stable_diffusion"
    candidate_pattern = UNET_CANDIDATES
    default_pool = "spatial_max"
    condition_kind = "prompt"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler=None, path=None, record=None):
        super().__init__(path, record)
        self.denoiser, self.vae, self.text_encoder = unet.eval(), vae.eval(), text_encoder.eval()
        self.tokenizer = tokenizer
        self.scheduler = _ddpm(scheduler)
        size = unet.config.sample_size
        self.latent_size = size if isinstance(size, int) else size[0]
        self.latent_channels = unet.config.in_channels
        self.image_size = self.latent_size * 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_channels = vae.config.in_channels

    def modules(self):
        return [self.denoiser, self.vae, self.text_encoder]

    @property
    def default_layer(self) -> str:
        n = len(self.denoiser.up_blocks[0].resnets)
        return f"up_blocks.0.resnets.{n - 1}.nonlinearity"

    bottleneck = "mid_block"

    def steering_layers(self):
        return _up_block_recipe(self.denoiser)

    @torch.no_grad()
    def _encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]                                  # (B, L, D)

    def null_condition(self, batch):
        if "_null_cache" not in self.__dict__:
            self._null_cache = self._encode_prompts([""])
        return self._null_cache.expand(batch, -1, -1)

    def condition(self, values):
        return self._encode_prompts([str(v) for v in values])

    def denoise(self, z_t, t, cond=None):
        cond = self.null_condition(z_t.shape[0]) if cond is None else cond
        return self.denoiser(z_t, t, encoder_hidden_states=cond).sample


class DiTAdapter(_Latent, _SchedulerNoise, Adapter):
    """diffusers ``DiTTransformer2DModel`` (+ ``AutoencoderKL`` when latent), class-conditional.

    Null class = ``num_embeds_ada_norm``; learned-σ outputs are cut to the ε half. Default layer:
    the middle transformer block, token mean. diffusers' DiT pipeline orders guidance batches
    [cond, uncond].
    """

    family = "dit"
    candidate_pattern = r"(^|\.)transformer_blocks\.\d+$"                         # every transformer block
    default_pool = "token_mean"
    steering_pool = "token_mean"
    cfg_order = "cond_uncond"
    condition_kind = "class"

    def __init__(self, transformer, scheduler=None, vae=None, path=None, record=None):
        super().__init__(path, record)
        self.denoiser, self.vae = transformer.eval(), (vae.eval() if vae is not None else None)
        self.scheduler = _ddpm(scheduler)
        cfg = transformer.config
        self.latent_size, self.latent_channels = cfg.sample_size, cfg.in_channels
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_size = cfg.sample_size * scale
        self.image_channels = vae.config.in_channels if vae is not None else cfg.in_channels
        self.num_classes = cfg.num_embeds_ada_norm

    def modules(self):
        return [self.denoiser] + ([self.vae] if self.vae is not None else [])

    @property
    def default_layer(self) -> str:
        return f"transformer_blocks.{len(self.denoiser.transformer_blocks) // 2}"

    def steering_layers(self):
        n = len(self.denoiser.transformer_blocks)
        return [f"transformer_blocks.{i}" for i in range(n // 2, n)]

    def denoise(self, z_t, t, cond=None):
        cond = self.null_condition(z_t.shape[0]) if cond is None else cond
        ts = torch.full((z_t.shape[0],), int(t), dtype=torch.long, device=z_t.device)
        out = self.denoiser(z_t, timestep=ts, class_labels=cond).sample
        return out[:, :z_t.shape[1]]

    def null_condition(self, batch):
        return torch.full((batch,), self.num_classes, dtype=torch.long, device=self.device)

    def condition(self, values):
        return _class_labels(self, values)


class TheoryAdapter(Adapter):
    """The theory lab's ReLU-DAE / time-conditioned ReLU diffusion on flattened images.

    Timesteps are noise levels σ (z_t = z + σε); the hooked layer is ``act`` (relu(Wᵀx), (B, p)).
    Only the time-conditioned ``ReLUDiffusion`` samples (Euler steps of the probability-flow ODE).
    """

    family = "theory"
    candidate_pattern = r"^act$"                                                   # the hidden ReLU layer
    default_pool = "flatten"
    steering_pool = "flatten"
    default_t = 0.1
    t_grid = (0.05, 0.1, 0.2, 0.5, 1.0)                   # noise levels σ
    t_convention = "sigma"

    def __init__(self, model: nn.Module, image_shape: tuple[int, int, int], path=None, record=None):
        super().__init__(path, record)
        self.denoiser = model.eval()
        self.image_channels, self.image_size = image_shape[0], image_shape[1]

    @property
    def mean(self) -> torch.Tensor | None:
        return getattr(self.denoiser, "mean", None)

    @property
    def default_layer(self) -> str:
        return "act"

    @property
    def latent_shape(self):
        return (self.image_channels * self.image_size ** 2,)

    def validate_t(self, t):
        check(t == t and t > 0, f"t={t}: the theory family's timestep is a noise level σ > 0")

    def prepare(self, x):
        z = x.reshape(x.shape[0], -1).to(self.device, self.dtype)
        return z - self.mean if self.mean is not None else z

    def decode(self, z):
        z = z + self.mean if self.mean is not None else z
        return z.float().reshape(-1, self.image_channels, self.image_size, self.image_size).clamp(-1, 1).cpu()

    def predict_eps(self, z_t, t, cond=None):
        return (z_t - self.denoise(z_t, t, cond)) / float(t)               # the model predicts x₀

    def denoise(self, z_t, t, cond=None):
        if hasattr(self.denoiser, "g"):
            return self.denoiser(z_t, torch.full((z_t.shape[0],), float(t), device=z_t.device, dtype=z_t.dtype))
        return self.denoiser(z_t)

    def sampler(self, steps, eta=0.0):
        check(hasattr(self.denoiser, "g"), "theory ReLUDAE: a denoiser at one noise level cannot sample; "
                                           "`diffmem theory diffusion` trains a ReLUDiffusion that can")
        from diffmem.theory.diffusion import SIGMA_MAX, SIGMA_MIN
        return EulerSigmaSampler(steps, SIGMA_MIN, SIGMA_MAX)


class CustomAdapter(Adapter):
    """Any ``nn.Module`` with a user call ``forward(module, z_t, t, cond) → output``.

    ``prepare`` defaults to the identity and noising to z + t·ε (t a noise level); ``latent_shape``
    (one model-space input's shape, e.g. ``(1024,)`` for a flattening ``prepare``) defaults to the
    shape ``prepare`` gives a zero image.
    """

    family = "custom"

    def __init__(self, module: nn.Module, forward: Callable, image_size: int, image_channels: int,
                 default_layer: str, prepare: Callable | None = None, default_t: float = 0.1,
                 default_pool: str = "auto", latent_shape: tuple[int, ...] | None = None):
        super().__init__()
        self._latent_shape = None if latent_shape is None else tuple(int(v) for v in latent_shape)
        self.denoiser = module.eval()
        self._forward, self._prepare = forward, prepare
        self.image_size, self.image_channels = image_size, image_channels
        self._default_layer, self.default_t, self.default_pool = default_layer, default_t, default_pool

    @property
    def default_layer(self) -> str:
        return self._default_layer

    @property
    def latent_shape(self):
        if self._latent_shape is None:
            with torch.no_grad():
                zero = torch.zeros(1, self.image_channels, self.image_size, self.image_size, device=self.device)
                self._latent_shape = tuple(self.prepare(zero).shape[1:])
        return self._latent_shape

    def prepare(self, x):
        x = x.to(self.device)
        return self._prepare(x) if self._prepare else x

    def denoise(self, z_t, t, cond=None):
        return self._forward(self.denoiser, z_t, t, cond)
