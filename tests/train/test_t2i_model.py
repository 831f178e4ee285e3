"""The shipped text-to-image model (assets/bench/t2i): plain diffusers samples it, its duplicated
captions are memorized, the copy rule holds on round trips, and the prompt-level bench and the
per-prompt audit run on it with figures above stated floors."""

import json

import numpy as np
import pytest
import torch

from diffmem.data.records import ASSETS
from diffmem.cli import main

T2I = ASSETS / "bench" / "t2i"
RECORD = json.loads((T2I / "diffmem.json").read_text())


def _by_kind(kind: str, copies: int | None = None) -> list[int]:
    return [i for i, k in enumerate(RECORD["kinds"])
            if k == kind and (copies is None or RECORD["item_copies"][i] == copies)]


def _round_trips(pipe, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)


def _images(positions) -> torch.Tensor:
    return torch.from_numpy(np.load(T2I / "data.npy")[positions]).float() / 127.5 - 1


def test_plain_diffusers_samples_memorized_captions():
    """No diffmem code in the loop: the most duplicated captions reproduce their own training image."""
    from diffusers import StableDiffusionPipeline
    from diffmem.neighbours import nearest_two
    pipe = StableDiffusionPipeline.from_pretrained(T2I, local_files_only=True, safety_checker=None)
    top = max(RECORD["item_copies"])
    dup = _by_kind("dup", top)[:8]
    prompts = [RECORD["captions"][i] for i in dup]
    out = pipe(prompts, num_inference_steps=50, guidance_scale=7.5, output_type="np",
               generator=torch.Generator().manual_seed(0)).images                      # (8, H, W, 3) in [0, 1]
    x = torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1
    train = RECORD["indices"]
    nearest, d1, d2 = nearest_two(x, _round_trips(pipe, _images(train)))
    own = (np.asarray(train)[nearest] == np.asarray(dup)) & (d1 / d2 < 1 / 3)
    # the record measured ≥ 50% own copies for these captions; 8 plain-diffusers generations must show it
    assert own.sum() >= 4, (own, d1 / d2)


def test_record_states_the_memorization_it_was_shipped_for():
    final = RECORD["copy_share_final"]
    top = f"dup_x{max(RECORD['item_copies'])}"
    assert final["generations"] == 4 and final["sampling_steps"] == 50 and RECORD["check_guidance"] == 7.5
    assert final[top]["own_copy"] >= 0.5
    assert RECORD["train_seconds"] <= 45 * 60


def test_every_training_item_counts_as_a_copy_of_itself_through_the_vae():
    """A generation that lands on an item's latent decodes to that item's round trip: each round trip is
    a copy of its own item (exactly), and stays one when its latent is perturbed by 5% of the latent
    scale (all duplicated items, ≥ 99% of all; measured 99.8%). Against the raw images, the pixel rule
    calls only a minority of round trips copies (measured 36%): why round trips are the reference."""
    from diffmem.neighbours import label_samples
    from diffmem.models import load_adapter
    a = load_adapter(T2I)
    train = _images(RECORD["indices"])
    copies = np.asarray(RECORD["copies"])
    rt = a.round_trip(train)
    own = np.arange(len(train))
    exact = label_samples(rt, rt, copies)
    assert exact["memorized"].all() and (exact["nearest"] == own).all()
    z = a.prepare(train)
    near = a.decode(z + 0.05 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0)))
    lab = label_samples(near, rt, copies)
    hit = lab["memorized"] & (lab["nearest"] == own)
    assert hit[copies > 1].all() and hit.mean() >= 0.99
    raw = label_samples(rt, train, copies)
    assert raw["memorized"].mean() < 0.5


def _prompt_file(tmp_path, per_kind: int) -> str:
    pick = (_by_kind("dup", max(RECORD["item_copies"]))[:per_kind] + _by_kind("single")[:per_kind]
            + [i for i in _by_kind("held_out") if i % 2 == 1][:per_kind])
    generic = list(dict.fromkeys(RECORD["captions"][i] for i in _by_kind("generic")))[:per_kind]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join([RECORD["captions"][i] for i in pick] + generic) + "\n")
    return str(path)


@pytest.mark.slow
def test_prompt_level_bench_on_the_shipped_model(tmp_path):
    out = tmp_path / "bench"
    code = main(["bench", "--model", str(T2I), "--seeds", "0", "--generations", "2", "--prompts",
                 _prompt_file(tmp_path, 12), "--quiet", "--out", str(out)])
    assert code == 0
    b = json.loads((out / "bench.json").read_text())
    assert b["level"] == "prompt" and b["guidance"] == 7.5 and b["split"]["overlap"] == 0
    pm, im = b["prompt_methods"], b["methods"]
    assert {"spikiness_official", "wen", "sharpness", "anisotropy", "fusion", "nn_oracle", "random"} <= set(pm)
    # floors measured on this fixture (seed 0), each with its margin stated in docs/t2i.md
    assert pm["nn_oracle"]["auroc"]["mean"] >= 0.95
    assert pm["fusion"]["auroc"]["mean"] >= pm["random"]["auroc"]["mean"] + 0.2
    assert pm["fusion"]["spearman"]["mean"] >= 0.3
    assert im["fusion"]["auroc"]["mean"] >= im["random"]["auroc"]["mean"] + 0.2
    assert b["copy_share"]["dup"]["own_copy"]["mean"] >= 0.4
    prompts = __import__("pandas").read_parquet(out / "prompts.parquet")
    assert set(prompts["kind"]) == {"dup", "single", "generic", "reference"}
    assert (prompts.groupby("prompt_index")["split"].nunique() == 1).all()


@pytest.mark.slow
def test_audit_gives_per_prompt_flags_and_strength(tmp_path):
    out = tmp_path / "audit"
    code = main(["audit", str(T2I), "--prompts", _prompt_file(tmp_path, 6), "--generations", "2", "--quiet",
                 "--seed", "5", "--out", str(out)])
    assert code == 0
    a = json.loads((out / "audit.json").read_text())
    rows = a["per_condition"]
    assert len(rows) == 24 and all(len(r["flags"]) == 2 and r["n"] == 2 for r in rows)
    dup = {RECORD["captions"][i] for i in _by_kind("dup", max(RECORD["item_copies"]))}
    mean_strength = lambda s: np.mean([r["strength"] for r in rows if (r["condition"] in dup) == s])  # noqa: E731
    assert mean_strength(True) > mean_strength(False) + 0.3
    assert a["recall"] is not None and a["precision"] is not None
