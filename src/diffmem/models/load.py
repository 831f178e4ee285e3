"""Load a local model folder into a probe adapter; the family is read from its config files.

Accepted folders (always ``local_files_only=True``, weights from safetensors unless
``allow_pickle``):

* pipelines with ``model_index.json``: ``StableDiffusionPipeline`` (unet, vae, text_encoder,
  tokenizer, scheduler), ``DiTPipeline`` (transformer, vae, scheduler), ``DDPMPipeline`` /
  ``DDIMPipeline`` (unet, scheduler);
* single models with ``config.json``: ``UNet2DModel``, ``DiTTransformer2DModel`` (with a
  ``scheduler/`` subfolder or ``scheduler_config.json`` when present), or the theory lab's
  ``ReLUDAE`` / ``ReLUDiffusion`` (``model.safetensors``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
import os
from pathlib import Path

import torch

from diffmem.errors import DiffmemError, check
from diffmem.models.record import ModelRecord
from diffmem.probe.adapters import Adapter, DiTAdapter, StableDiffusionAdapter, TheoryAdapter, UNet2DAdapter
from diffmem.schemas import ComponentConfig, SchedulerConfig, validate

FAMILIES = ("stable_diffusion", "dit", "unet2d", "theory")


def quiet_libraries() -> None:
    """Silence diffusers/transformers warnings and their own progress bars (diffmem shows its own)."""
    import diffusers
    import transformers
    for lib in (diffusers.utils.logging, transformers.utils.logging):
        lib.set_verbosity(50)        # CRITICAL: their errors reach the user as one diffmem error line instead
        lib.disable_progress_bar()


_PIPELINES = {"StableDiffusionPipeline": "stable_diffusion", "DiTPipeline": "dit",
              "DDPMPipeline": "unet2d", "DDIMPipeline": "unet2d"}
_MODELS = {"UNet2DModel": "unet2d", "DiTTransformer2DModel": "dit", "Transformer2DModel": "dit",
           "ReLUDAE": "theory", "ReLUDiffusion": "theory"}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffmemError(f"{path}: unreadable config ({type(exc).__name__}: {exc})") from None
    check(isinstance(data, dict), f"{path}: a config must be a JSON object, got {type(data).__name__}")
    return data


LORA = "lora.json"          # a LoRA checkpoint folder: {"base": model folder, "rank": R} + LORA_WEIGHTS
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def lora_base(path: Path) -> Path | None:
    """The base model folder of the LoRA checkpoint ``path`` (``lora.json`` + :data:`LORA_WEIGHTS`, as
    ``diffmem finetune --lora-rank`` writes), or None when ``path`` is not one."""
    if not (path / LORA).is_file():
        return None
    base = _read(path / LORA).get("base")
    check(isinstance(base, str) and (path / LORA_WEIGHTS).is_file(),
          f"{path / LORA}: a LoRA checkpoint names its base model folder ('base') next to {LORA_WEIGHTS}")
    base = Path(base) if Path(base).is_absolute() else (path / base)
    check(base.is_dir() and not (base / LORA).exists(), f"{path / LORA}: base {base} is not a model folder")
    check(detect_family(base) == "stable_diffusion", f"{path / LORA}: base {base} is not a Stable Diffusion "
                                                      f"model (LoRA checkpoints are of diffmem finetune)")
    return base


def detect_family(path: str | os.PathLike) -> str:
    """The family of the model folder ``path`` (a LoRA checkpoint: its base's); error if it is not one
    diffmem knows."""
    path = Path(path)
    if not path.is_dir():
        raise DiffmemError(f"{path}: no such model folder")
    base = lora_base(path)
    if base is not None:
        return detect_family(base)
    for name, table in (("model_index.json", _PIPELINES), ("config.json", _MODELS)):
        if (path / name).exists():
            cls = _read(path / name).get("_class_name")
            if cls in table:
                return table[cls]
            raise DiffmemError(f"{path / name}: unknown model family {cls!r} "
                               f"(known: {', '.join(sorted(table))})")
    raise DiffmemError(f"{path}: not a model folder (no model_index.json or config.json)")


def check_config(path: Path) -> None:
    """A component's ``config.json`` against :class:`~diffmem.schemas.ComponentConfig` (size and count keys
    positive integers): a config that would only fail deep inside torch is one error naming the file and key."""
    cfg = path / "config.json"
    if cfg.exists():
        validate(_read(cfg), ComponentConfig, str(cfg))


def _component(cls, path: Path, allow_pickle: bool, **kw):
    check_config(path)
    try:
        return cls.from_pretrained(path, local_files_only=True,
                                   **({} if allow_pickle else {"use_safetensors": True}), **kw)
    except (OSError, ValueError, EnvironmentError, RuntimeError, TypeError) as exc:
        pickled = not allow_pickle and any(path.glob("*.bin")) and not any(path.glob("*.safetensors"))
        hint = "; its weights are a pickle format: pass allow_pickle=True to unpickle them" if pickled else ""
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DiffmemError(f"{path}: could not load {cls.__name__} ({first}){hint}") from None


def _scheduler(path: Path):
    import diffusers
    for cfg in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if cfg.exists():
            config = _read(cfg)
            name = validate(config, SchedulerConfig, str(cfg))["_class_name"]
            cls = getattr(diffusers, name, None)
            check(isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin),
                  f"{cfg}: unknown scheduler class {name!r}")
            try:
                return cls.from_config(config)
            except (TypeError, ValueError, KeyError) as exc:
                raise DiffmemError(f"{cfg}: invalid scheduler config ({type(exc).__name__}: {exc})") from None
    return None


def architecture(path: str | os.PathLike) -> dict:
    """What must agree between checkpoints of one run: the family and the denoiser's config (its
    ``config.json`` without the ``_``-prefixed bookkeeping keys)."""
    path = Path(path)
    family = detect_family(path)
    path = lora_base(path) or path                      # a LoRA keeps its base's architecture
    for sub in ("unet", "transformer", "."):
        if (path / sub / "config.json").exists():
            cfg = _read(path / sub / "config.json")
            return {"family": family, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    return {"family": family}


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → cuda if available, else mps, else cpu; ``cuda:N`` must name a visible GPU."""
    import re
    device = str(device)
    check(device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", device) is not None,
          f"device={device!r}: one of auto, cpu, cuda, cuda:N, mps")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        k = int(device.split(":")[1]) if ":" in device else 0
        check(k < n, f"device={device}: {n} CUDA device(s) visible")
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        check(mps is not None and mps.is_available(), "device='mps': MPS is not available here")
    return torch.device(device)


def resolve_dtype(dtype: str = "float32") -> torch.dtype:
    check(dtype in DTYPES, f"dtype={dtype!r}: one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class LoadOptions:
    """How model folders are loaded: ``allow_pickle`` (unpickle ``.bin`` weights), ``device``
    (auto|cpu|cuda|cuda:N|mps), ``dtype`` (float32|float16|bfloat16)."""

    allow_pickle: bool = False
    device: str = "auto"
    dtype: str = "float32"

    def load(self, path: str | os.PathLike) -> Adapter:
        return load_adapter(path, self.allow_pickle, self.device, self.dtype)


def load_adapter(path: str | os.PathLike, allow_pickle: bool = False, device: str = "cpu",
                 dtype: str = "float32") -> Adapter:
    """Load the model folder ``path`` as an :class:`~diffmem.probe.adapters.Adapter` on ``device``
    (auto|cpu|cuda|cuda:N|mps) in ``dtype`` (float32|float16|bfloat16); its ``record`` is the
    folder's :class:`~diffmem.models.record.ModelRecord` (None without ``diffmem.json``). A LoRA
    checkpoint folder (``lora.json``) loads as its base with the LoRA applied, and no record."""
    path = Path(path)
    base = lora_base(path)
    if base is not None:
        return _load_lora(path, base, allow_pickle, device, dtype)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    family = detect_family(path)
    record = ModelRecord.read(path)
    quiet_libraries()
    import diffusers
    if family == "theory":
        adapter = _load_theory(path, record)
    elif family == "stable_diffusion":
        from transformers import CLIPTextModel, CLIPTokenizer
        _need_folders(path, ("unet", "vae", "text_encoder", "tokenizer"))
        try:
            tok = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DiffmemError(f"{path / 'tokenizer'}: could not load the tokenizer ({exc})") from None
        adapter = StableDiffusionAdapter(
            _component(diffusers.UNet2DConditionModel, path / "unet", allow_pickle),
            _component(diffusers.AutoencoderKL, path / "vae", allow_pickle),
            _component(CLIPTextModel, path / "text_encoder", allow_pickle), tok, _scheduler(path),
            path=path, record=record)
    elif family == "dit":
        pipeline = (path / "model_index.json").exists()
        if pipeline:
            _need_folders(path, ("transformer",))
        root = path / "transformer" if pipeline else path
        vae = _component(diffusers.AutoencoderKL, path / "vae", allow_pickle) if (path / "vae").is_dir() else None
        adapter = DiTAdapter(_component(diffusers.DiTTransformer2DModel, root, allow_pickle), _scheduler(path), vae,
                             path=path, record=record)
    else:
        pipeline = (path / "model_index.json").exists()
        if pipeline:
            _need_folders(path, ("unet",))
        root = path / "unet" if pipeline else path
        adapter = UNet2DAdapter(_component(diffusers.UNet2DModel, root, allow_pickle), _scheduler(path),
                                null_class=None if record is None else record.null_class, path=path, record=record)
    return adapter.to(dev, dt)


def _load_lora(path: Path, base: Path, allow_pickle: bool, device: str, dtype: str) -> Adapter:
    """The ``base`` model with the LoRA checkpoint ``path`` loaded into its denoiser (peft, as
    ``pipe.load_lora_weights`` does); the adapter's ``path`` is the checkpoint, it has no record."""
    from safetensors import SafetensorError
    adapter = load_adapter(base, allow_pickle, "cpu", "float32")
    try:
        adapter.denoiser.load_lora_adapter(str(path), prefix="unet", weight_name=LORA_WEIGHTS)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise DiffmemError(f"{path / LORA_WEIGHTS}: not LoRA weights of its base ({type(exc).__name__}: {exc})") from None
    adapter.path, adapter.record = path, None
    return adapter.to(resolve_device(device), resolve_dtype(dtype))


WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".txt", ".model")


def model_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a model folder's weights and configs (sorted relative paths and contents; the
    training record, a saved detector and training checkpoints do not change scores and are left out)."""
    import hashlib
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        rel = f.relative_to(root)
        if rel.name == "diffmem.json" or rel.parts[0] in ("detector", "checkpoints") or rel.parts[0].startswith("."):
            continue
        h.update(rel.as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _need_folders(path: Path, names) -> None:
    missing = [n for n in names if not (path / n).is_dir()]
    check(not missing, f"{path}: missing component folder(s) {', '.join(missing)} (models load from local "
                       f"folders only)")


def save_theory_model(model: torch.nn.Module, image_shape: tuple[int, int, int], path: str | os.PathLike) -> Path:
    """Save a ReLUDAE / ReLUDiffusion as ``config.json`` + ``model.safetensors``."""
    from safetensors.torch import save_file
    from diffmem.theory.diffusion import ReLUDiffusion
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if isinstance(model, ReLUDiffusion):
        config = {"_class_name": "ReLUDiffusion", "d": model.W.shape[0], "p": model.W.shape[1],
                  "hidden": model.g[0].out_features}
    else:
        config = {"_class_name": "ReLUDAE", "d": model.W1.shape[0], "p": model.W1.shape[1], "tied": model.tied}
    config["image_shape"] = list(image_shape)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, path / "model.safetensors")
    return path


def _load_theory(path: Path, record: ModelRecord | None = None) -> TheoryAdapter:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from diffmem.theory.diffusion import ReLUDiffusion
    from diffmem.theory.model import ReLUDAE
    cfg = _read(path / "config.json")
    try:
        state = load_file(path / "model.safetensors")
        d, p = int(cfg["d"]), int(cfg["p"])
        if cfg["_class_name"] == "ReLUDiffusion":
            model = ReLUDiffusion(d, p, hidden=int(cfg.get("hidden", 64)))
        else:
            model = ReLUDAE(torch.zeros(d, p), None if cfg.get("tied", True) else torch.zeros(d, p))
        model.load_state_dict(state)
        shape = tuple(int(v) for v in cfg["image_shape"])
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        raise DiffmemError(f"{path}: not a valid theory model ({exc})") from None
    return TheoryAdapter(model, shape, path=path, record=record)


def wrap_model(model, scheduler=None) -> Adapter:
    """An :class:`Adapter` for a model object in memory — an adapter (returned as is), a diffusers
    ``UNet2DModel`` or ``DiTTransformer2DModel``, possibly wrapped by DDP/accelerate (``.module``)
    or ``torch.compile`` (``._orig_mod``). Other families: build their adapter and pass that."""
    if isinstance(model, Adapter):
        return model
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    import diffusers
    if isinstance(model, diffusers.UNet2DModel):
        return UNet2DAdapter(model, scheduler)
    if isinstance(model, diffusers.DiTTransformer2DModel):
        return DiTAdapter(model, scheduler)
    raise DiffmemError(f"model of type {type(model).__name__}: pass an Adapter for this family "
                       f"(diffmem.probe.adapters)")
