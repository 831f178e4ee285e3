"""Stable Diffusion in miniature: a text-to-image model trained from one seed on colour-tinted
Fashion-MNIST, with captions some of which it is meant to memorize.

The data (:func:`build_items`): every item is a Fashion-MNIST image at ``size`` px tinted by a
colour word, with a caption.

* ``generic`` items share template captions ("a red dress"): the non-memorized prompts;
* ``dup`` items are repeated ``copies`` times, each with its own unique caption ("kodari mesun a red
  dress"), like LAION's verbatim-memorized captions (several duplication levels);
* ``single`` items are seen once with a unique caption: the hard negatives;
* ``held_out`` items (from the test split) are never trained on: the references.

The model (:func:`train_t2i`), as in Stable Diffusion: (a) an ``AutoencoderKL`` trained on the
training images (f = 4); (b) a **frozen, randomly initialized** ``CLIPTextModel`` with a word-level
``CLIPTokenizer`` built from the captions; (c) a ``UNet2DConditionModel`` trained on the VAE latents
(posterior mean × scaling factor) with caption dropout for classifier-free guidance. The output is a
``StableDiffusionPipeline`` folder that plain diffusers loads, plus ``data.npy`` (every item's image,
uint8 (N, 3, H, W)) and ``diffmem.json`` (the training record: captions, kinds, copies, held-out
items, settings, and the copy share of each caption group measured as training went and at the end).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffmem.train.dataset import Duplication
from diffmem.errors import check
from diffmem.outputs import output_dir, progress
from diffmem.schemas import RecordFile, write_result
from diffmem.train import cosine_schedule, update

COLOURS = {"red": (1.0, 0.15, 0.15), "green": (0.15, 0.9, 0.15), "blue": (0.2, 0.35, 1.0),
           "yellow": (1.0, 0.9, 0.1), "purple": (0.65, 0.2, 1.0), "cyan": (0.1, 0.9, 0.9),
           "orange": (1.0, 0.5, 0.05), "white": (1.0, 1.0, 1.0)}
CLASS_WORDS = ("top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
KINDS = ("generic", "dup", "single", "held_out")
FINAL_GENERATIONS, FINAL_STEPS = 4, 50      # the final copy share is measured as the benchmark samples


@dataclass(frozen=True)
class T2IConfig:
    """What to train: data mix, network sizes and schedule (defaults: the shipped ``assets/bench/t2i``).

    ``dup`` is COUNTxCOPIES[,…] (unique captions); ``vae_steps``/``steps`` are optimizer steps at
    ``batch_size``; ``check_every`` measures the copy share of the unique captions every K UNet steps
    (``check_generations`` each, DDIM ``check_steps`` at ``check_guidance``); 0 disables it."""

    size: int = 32
    generic: int = 1000
    dup: str = "20x100,20x25"
    single: int = 40
    held_out: int = 500
    vae_steps: int = 2000
    steps: int = 10000
    batch_size: int = 64
    lr: float = 1e-3
    vae_lr: float = 1e-3
    caption_dropout: float = 0.1
    text_width: int = 64
    text_layers: int = 2
    max_tokens: int = 12
    unet_channels: tuple[int, ...] = (32, 64, 64)
    check_every: int = 1000
    check_generations: int = 2
    check_steps: int = 25
    check_guidance: float = 7.5


def _pseudo_words(n: int, rng: np.random.Generator, avoid: set[str]) -> list[str]:
    """n distinct three-syllable pseudo-words (not in ``avoid``)."""
    out: list[str] = []
    seen = set(avoid)
    while len(out) < n:
        w = "".join(rng.choice(_SYLLABLES, 3))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def tint(gray: np.ndarray, colours: list[str]) -> np.ndarray:
    """Gray images (N, 1, H, W) in [-1, 1] → RGB (N, 3, H, W) uint8, ink scaled by each colour word."""
    ink = (gray + 1.0) / 2.0                                                   # (N, 1, H, W) in [0, 1]
    rgb = np.asarray([COLOURS[c] for c in colours], dtype=np.float32)[:, :, None, None]   # (N, 3, 1, 1)
    return np.round(ink * rgb * 255.0).clip(0, 255).astype(np.uint8)          # (N, 3, H, W)


def build_items(cfg: T2IConfig, seed: int, train=None, test=None) -> dict:
    """The items of the data set: ``images`` uint8 (N, 3, size, size) and per item ``kind``,
    ``caption``, ``colour``, ``class`` (word), ``copies`` (0 for held-out), ``source`` ("train"/"test")
    and ``source_index`` in that Fashion-MNIST split. ``train``/``test`` are (images (N, 1, H, W) in
    [-1, 1], labels) pairs; default: Fashion-MNIST."""
    from diffmem.data.images import load_fashion_mnist, resize_area
    dups = Duplication.parse(cfg.dup)
    train = train if train is not None else load_fashion_mnist("train")
    test = test if test is not None else load_fashion_mnist("test")
    n_dup = sum(d.count for d in dups)
    n_train = cfg.generic + n_dup + cfg.single
    check(n_train >= 1 and n_train <= len(train[0]), f"t2i data: {n_train} training items requested, "
                                                        f"the source has {len(train[0])}")
    check(cfg.held_out <= len(test[0]), f"t2i data: {cfg.held_out} held-out items, the test split has {len(test[0])}")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(train[0]))[:n_train]
    held = rng.permutation(len(test[0]))[:cfg.held_out]
    kinds = ["generic"] * cfg.generic + ["dup"] * n_dup + ["single"] * cfg.single + ["held_out"] * cfg.held_out
    copies = [1] * cfg.generic + [c for d in dups for c in [d.copies] * d.count] + [1] * cfg.single + [0] * cfg.held_out
    gray = np.concatenate([train[0][pick], test[0][held]])
    labels = np.concatenate([train[1][pick], test[1][held]]).astype(int)
    colours = [str(c) for c in rng.choice(list(COLOURS), len(kinds))]
    words = _pseudo_words(2 * len(kinds), rng, set(COLOURS) | set(CLASS_WORDS) | {"a"})
    captions = []
    for j, kind in enumerate(kinds):
        base = f"a {colours[j]} {CLASS_WORDS[labels[j]]}"
        # held-out items get a unique caption too (half of them), so reference prompts of both kinds exist
        unique = kind in ("dup", "single") or (kind == "held_out" and j % 2 == 1)
        captions.append(f"{words[2 * j]} {words[2 * j + 1]} {base}" if unique else base)
    images = tint(resize_area(torch.from_numpy(np.ascontiguousarray(gray)), cfg.size).numpy(), colours)
    return {"images": images, "kind": kinds, "caption": captions, "colour": colours,
            "class": [CLASS_WORDS[c] for c in labels], "label": labels.tolist(), "copies": copies,
            "source": ["train"] * n_train + ["test"] * cfg.held_out,
            "source_index": pick.tolist() + held.tolist()}


def build_tokenizer(captions: list[str], max_tokens: int):
    """A word-level ``CLIPTokenizer``: a BPE trained on the captions until every word is one token.

    The trainer breaks ties in an order that varies between runs, so token ids are reassigned
    canonically (special tokens first, then sorted): the same captions give the same ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(captions, trainers.BpeTrainer(
        vocab_size=1_000_000, min_frequency=1, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>", show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    special = ["<|startoftext|>", "<|endoftext|>"]
    tokens = special + sorted(t for t in model["vocab"] if t not in special)
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m) for m in model["merges"]],
                         model_max_length=max_tokens)


def make_text_encoder(vocab_size: int, cfg: T2IConfig, seed: int):
    """A frozen, randomly initialized ``CLIPTextModel`` (``text_width`` wide, ``text_layers`` deep)."""
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=cfg.text_width,
            intermediate_size=2 * cfg.text_width, num_attention_heads=4, num_hidden_layers=cfg.text_layers,
            vocab_size=vocab_size, max_position_embeddings=cfg.max_tokens)).eval().requires_grad_(False)


def make_vae(seed: int):
    """An ``AutoencoderKL`` (16/32/32 channels, f = 4, 4 latent channels)."""
    from diffusers import AutoencoderKL
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        return AutoencoderKL(block_out_channels=(16, 32, 32), in_channels=3, out_channels=3, latent_channels=4,
                             layers_per_block=1, norm_num_groups=8,
                             down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def make_unet(latent_size: int, cfg: T2IConfig, seed: int):
    """A ``UNet2DConditionModel`` on 4-channel latents, cross-attending to the text encoder."""
    from diffusers import UNet2DConditionModel
    ch = tuple(cfg.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (len(ch) - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(ch) - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        return UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=ch,
                                    layers_per_block=1, norm_num_groups=min(32, ch[0] // 2),
                                    cross_attention_dim=cfg.text_width, attention_head_dim=8,
                                    down_block_types=down, up_block_types=up)


def train_vae(vae, x: torch.Tensor, cfg: T2IConfig, g: torch.Generator, quiet: bool) -> float:
    """Fit the VAE to images x (N, 3, H, W) in [-1, 1] (MSE + 1e-6·KL); returns the final MSE."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    sched = cosine_schedule(opt, cfg.vae_steps)
    vae.train()
    losses = []
    bar = progress(range(cfg.vae_steps), desc="train vae", disable=quiet)
    for k in bar:
        xb = x[torch.randint(len(x), (cfg.batch_size,), generator=g)]                  # (B, 3, H, W)
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)         # (B, 4, h, w)
        rec = F.mse_loss(vae.decode(z).sample, xb)
        update(opt, sched, rec + 1e-6 * post.kl().mean())
        losses.append(rec.item())
        if k % 100 == 99:
            bar.set_postfix(mse=f"{np.mean(losses[-100:]):.4f}")
    bar.close()
    vae.eval()
    return float(np.mean(losses[-100:]))


@torch.no_grad()
def _encode(fn, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def copy_share(adapter, items: dict, train_rt: torch.Tensor, train_pos: np.ndarray, which: np.ndarray,
               generations: int, how, seed: int) -> dict:
    """Sample ``generations`` per caption of the items ``which`` (as ``how``, a
    :class:`~diffmem.probe.sampling.Sampler`, says) and label each against the VAE round
    trips ``train_rt`` (M, 3, H, W) of the training items (positions ``train_pos``): the share that
    copies a training item (d1/d2 < 1/3, ``copy``), its own item (``own_copy``), a duplicated item
    (``copies_duplicated``), and a duplicated item of the caption's class and colour (``copies_template``)."""
    from diffmem.neighbours import label_samples
    from diffmem.probe.sampling import sample_images
    prompts = [items["caption"][j] for j in which for _ in range(generations)]
    own = np.repeat(which, generations)
    x = sample_images(adapter, len(prompts), prompts, how, seed, True)
    lab = label_samples(x, train_rt, np.ones(len(train_rt)))
    near = train_pos[lab["nearest"]]
    copied_dup = lab["memorized"] & (np.asarray(items["copies"])[near] > 1)
    same = (np.asarray(items["colour"])[near] == np.asarray(items["colour"])[own]) & \
           (np.asarray(items["class"])[near] == np.asarray(items["class"])[own])
    return {"copy": float(lab["memorized"].mean()), "own_copy": float((lab["memorized"] & (near == own)).mean()),
            "copies_duplicated": float(copied_dup.mean()), "copies_template": float((copied_dup & same).mean()),
            "n": len(prompts)}


def checkpoint_groups(items: dict) -> dict[str, np.ndarray]:
    """Item positions whose captions the training run checks: each duplication level, singles, and
    one generic item per distinct generic caption."""
    kind, copies = np.asarray(items["kind"]), np.asarray(items["copies"])
    groups = {f"dup_x{c}": np.flatnonzero((kind == "dup") & (copies == c)) for c in sorted(set(copies[kind == "dup"]))}
    groups["single"] = np.flatnonzero(kind == "single")[:20]
    caps = np.asarray(items["caption"])
    generic = np.flatnonzero(kind == "generic")
    _, first = np.unique(caps[generic], return_index=True)
    groups["generic"] = generic[np.sort(first)][:40]
    return groups


def train_t2i(out: str | os.PathLike, cfg: T2IConfig = T2IConfig(), seed: int = 0, threads: int | None = None,
              quiet: bool = False, data: tuple | None = None) -> dict:
    """Train the three networks and write a ``StableDiffusionPipeline`` folder with ``data.npy`` and
    ``diffmem.json`` into ``out``; returns the record's summary (without per-item lists).

    ``data``: optional ((train images, labels), (test images, labels)) in place of Fashion-MNIST."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
    from diffmem.probe.adapters import StableDiffusionAdapter
    check(cfg.steps >= 1 and cfg.vae_steps >= 1 and cfg.batch_size >= 1, "steps and batch_size must be >= 1")
    check(0 <= cfg.caption_dropout < 1, f"caption_dropout {cfg.caption_dropout}: must be in [0, 1)")
    check(cfg.size % 4 == 0 and cfg.size >= 8, f"size {cfg.size}: must be a multiple of 4, at least 8")
    if threads:
        torch.set_num_threads(threads)
    t_start = time.time()
    items = build_items(cfg, seed, *(data or (None, None)))
    kind = np.asarray(items["kind"])
    train_pos = np.flatnonzero(kind != "held_out")
    copies = np.asarray(items["copies"])
    x_all = torch.from_numpy(items["images"]).float() / 127.5 - 1.0                     # (N, 3, H, W)
    x_train = x_all[train_pos]                                                         # (M, 3, H, W)
    g = torch.Generator().manual_seed(seed)

    tok = build_tokenizer(items["caption"], cfg.max_tokens)
    text = make_text_encoder(len(tok), cfg, seed)
    vae = make_vae(seed)
    t0 = time.time()
    vae_mse = train_vae(vae, x_train, cfg, g, quiet)
    vae_seconds = time.time() - t0
    with torch.no_grad():
        mu = _encode(lambda b: vae.encode(b).latent_dist.mean, x_train)                 # (M, 4, h, w)
        scale = float(1.0 / mu.std())
        vae.register_to_config(scaling_factor=scale)
        lat = mu * scale                                                               # (M, 4, h, w)

        def embed(caps):
            ids = tok(list(caps), padding="max_length", max_length=cfg.max_tokens, truncation=True,
                      return_tensors="pt").input_ids
            return text(ids)[0]                                                        # (B, L, D)
        emb = torch.cat([embed(items["caption"][j] for j in train_pos[i:i + 256])
                         for i in range(0, len(train_pos), 256)])                      # (M, L, D)
        null = embed([""])                                                             # (1, L, D)
    rows = torch.from_numpy(np.repeat(np.arange(len(train_pos)), copies[train_pos]))   # (R,) expanded rows
    unet = make_unet(lat.shape[-1], cfg, seed)
    noise_sched = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)   # latents are not in [-1, 1]
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    lrs = cosine_schedule(opt, cfg.steps)
    sampler_sched = DDIMScheduler.from_config(noise_sched.config, steps_offset=1, set_alpha_to_one=False)
    groups = checkpoint_groups(items)
    with torch.no_grad():
        train_rt = _encode(lambda b: vae.decode(vae.encode(b).latent_dist.mean).sample.clamp(-1, 1), x_train)
    history = []

    def measure(step: int, generations: int, steps: int) -> dict:
        from diffmem.probe.sampling import Sampler
        adapter = StableDiffusionAdapter(unet, vae, text, tok, sampler_sched)
        row = {"step": step, "generations": generations, "sampling_steps": steps}
        for name, which in groups.items():
            row[name] = copy_share(adapter, items, train_rt, train_pos, which, generations,
                                   Sampler(cfg.check_guidance, steps, batch_size=256), seed)
        unet.train()
        if not quiet:
            print(f"step {step}: " + ", ".join(f"{k} {v['copy']:.2f}" for k, v in row.items() if isinstance(v, dict)),
                  flush=True)
        return row

    unet.train()
    t0, losses = time.time(), []
    bar = progress(range(1, cfg.steps + 1), desc="train unet", disable=quiet)
    for k in bar:
        r = rows[torch.randint(len(rows), (cfg.batch_size,), generator=g)]             # (B,)
        z0 = lat[r]                                                                    # (B, 4, h, w)
        eps = torch.randn(z0.shape, generator=g)                                       # (B, 4, h, w)
        t = torch.randint(0, 1000, (cfg.batch_size,), generator=g)                     # (B,)
        drop = (torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout)[:, None, None]
        cond = torch.where(drop, null.expand(cfg.batch_size, -1, -1), emb[r])          # (B, L, D)
        loss = F.mse_loss(unet(noise_sched.add_noise(z0, eps, t), t, encoder_hidden_states=cond).sample, eps)
        losses.append(update(opt, lrs, loss, clip=1.0))
        if k % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if cfg.check_every and (k % cfg.check_every == 0 or k == cfg.steps):
            history.append(measure(k, cfg.check_generations, cfg.check_steps))
    bar.close()
    unet_seconds = time.time() - t0
    final = measure(cfg.steps, FINAL_GENERATIONS, FINAL_STEPS) if cfg.check_every else None
    unet.eval()
    record = {"data": "data.npy", "size": cfg.size, "indices": train_pos.tolist(),
              "copies": copies[train_pos].tolist(), "family": "stable_diffusion", "seed": seed,
              "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
              "captions": items["caption"], "kinds": items["kind"], "colours": items["colour"],
              "classes": items["class"], "item_copies": items["copies"], "source": items["source"],
              "source_index": items["source_index"],
              "held_out": np.flatnonzero(kind == "held_out").tolist(),
              "parameters": {"unet": sum(p.numel() for p in unet.parameters()),
                             "vae": sum(p.numel() for p in vae.parameters()),
                             "text_encoder": sum(p.numel() for p in text.parameters())},
              "text_encoder": "frozen, randomly initialized CLIPTextModel (not trained)",
              "vae_mse": vae_mse, "scaling_factor": scale, "final_loss": float(np.mean(losses[-200:])),
              "copy_share_history": history, "copy_share_final": final, "check_guidance": cfg.check_guidance,
              "vae_seconds": vae_seconds, "unet_seconds": unet_seconds, "train_seconds": time.time() - t_start}
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok,
                                   scheduler=sampler_sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with output_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        np.save(tmp / "data.npy", items["images"])
        write_result(tmp / "diffmem.json", record, RecordFile)
    return {k: v for k, v in record.items() if not isinstance(v, list) or k == "copy_share_history"}
