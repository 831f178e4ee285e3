"""Training sets with controlled duplication (the source images come from :func:`diffmem.data.records.load_source`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffmem.errors import check


@dataclass(frozen=True)
class Duplication:
    """``count`` images each repeated ``copies`` times."""

    count: int
    copies: int

    @classmethod
    def parse(cls, text: str) -> list["Duplication"]:
        """'10x80,20x20' → [Duplication(10, 80), Duplication(20, 20)]; '' → []."""
        out = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            a, sep, b = part.partition("x")
            check(sep == "x" and a.isdigit() and b.isdigit() and int(a) > 0 and int(b) > 0,
                  f"dup={text!r}: expected COUNTxCOPIES[,COUNTxCOPIES…] with positive integers")
            out.append(cls(int(a), int(b)))
        return out


def build_training_set(images: np.ndarray, labels: np.ndarray | None, distinct: int,
                       dup: list[Duplication], seed: int = 0) -> dict:
    """Pick ``distinct`` images plus the duplicated ones (disjoint), in a seeded random order.

    Returns ``{"indices": source index of each distinct image (list), "copies": copies of each
    distinct image (list, 1 = not duplicated), "rows": the expanded training rows (source
    indices, one per training example)}``.
    """
    n_dup = sum(d.count for d in dup)
    check(distinct >= 0, f"distinct={distinct}: must be >= 0")
    check(distinct + n_dup >= 1, "training set: no images requested")
    check(distinct + n_dup <= len(images),
          f"training set: {distinct + n_dup} distinct images requested, the source has {len(images)}")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(images))[:distinct + n_dup]
    copies = [1] * distinct
    for d in dup:
        copies += [d.copies] * d.count
    rows = np.repeat(pick, copies)
    return {"indices": pick.tolist(), "copies": copies, "rows": rows.tolist(),
            "labels": None if labels is None else labels[pick].tolist()}
