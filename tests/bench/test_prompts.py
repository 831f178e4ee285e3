"""The prompt-level benchmark's pieces (diffmem.bench.prompts), on hand-made records and scores."""

import numpy as np
import pytest

from diffmem.bench.prompts import per_prompt, prompt_groups, prompt_level
from diffmem.data.records import record_prompts
from diffmem.errors import DiffmemError
from diffmem.models.record import ModelRecord

CAPTIONS = ["a red dress", "a red dress", "a blue boot", "a blue boot", "kodari a red dress",   # 0-4 trained
            "mesun a green top", "zuvo a red bag", "lima a cyan coat",                        # 5-7 trained
            "pelo a red dress", "a blue boot"]                                              # 8-9 held out


def _record():
    return ModelRecord("data.npy", 32, (0, 1, 2, 3, 4, 5, 6, 7), (1, 1, 1, 1, 100, 25, 1, 1),
                       captions=tuple(CAPTIONS))


def test_kinds_come_from_captions_and_copies():
    ps = record_prompts(_record())
    kinds = dict(zip(ps.prompts, ps.kind))
    assert kinds == {"kodari a red dress": "dup", "mesun a green top": "dup", "zuvo a red bag": "single",
                     "lima a cyan coat": "single", "a red dress": "generic", "a blue boot": "generic",
                     "pelo a red dress": "reference"}
    assert ps.prompts[:2] == ("kodari a red dress", "mesun a green top")     # most duplicated first
    assert dict(zip(ps.prompts, ps.copies))["kodari a red dress"] == 100
    assert dict(zip(ps.prompts, ps.item))["a red dress"] == -1
    # a held-out image whose caption was trained on ("a blue boot") is no reference prompt
    assert ps.kind.count("reference") == 1


def test_user_prompts_are_classified_by_the_record():
    ps = record_prompts(_record(), prompts=["zuvo a red bag", "never seen", "a red dress"])
    assert ps.kind == ("single", "reference", "generic") and ps.item == (6, -1, -1)


def test_record_without_captions_is_refused():
    with pytest.raises(DiffmemError, match="no captions"):
        record_prompts(ModelRecord("fashion-mnist", 16, (0, 1), (1, 1)))


def test_groups_join_prompts_through_copied_items():
    # prompts 0 (own item 4), 1 (own item 5), 2 (generic), 3 (generic)
    gen_prompt = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    copied = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
    nearest = np.array([4, 9, 9, 9, 4, 5, 5, 5])                              # generic prompt 2 copies item 4
    g = prompt_groups(4, gen_prompt, copied, nearest, np.array([4, 5, -1, -1]))
    assert g[0] == g[2] and len({g[0], g[1], g[3]}) == 3                      # non-copies link nothing


def test_per_prompt_means():
    v = per_prompt(np.array([1.0, 0.0, 0.5, 0.5, 2.0]), np.array([0, 0, 1, 1, 3]), 4)
    assert v[:2].tolist() == [0.5, 0.5] and np.isnan(v[2]) and v[3] == 2.0


def test_prompt_level_by_hand():
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.2, 0.6])
    strength = np.array([1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0])
    r = prompt_level(scores, strength, cal_neg=np.array([0.65]), reference=np.array([0.05]), fpr=0.01)
    # positives {0.9, 0.8} above all four negatives {0.7, 0.1, 0.2, 0.6}; the 0.25 prompt is left out
    assert r["auroc"] == 1.0 and r["n_positive"] == 2 and r["n_negative"] == 4
    assert r["deployable"] == {"fpr": 0.25, "tpr": 1.0}                      # 0.7 > 0.65
    assert r["unlabelled"] == {"fpr": 1.0, "tpr": 1.0}                       # everything > 0.05
    from scipy.stats import spearmanr
    assert r["spearman"] == pytest.approx(spearmanr(scores, strength).statistic)
