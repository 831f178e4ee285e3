"""Scores joined with labels, ROC curves and score densities (what ``diffmem eval`` uses)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from diffmem.errors import DiffmemError, check
from diffmem.plotting import plt, save

_POSITIVE = {"1", "1.0", "true", "memorized", "mem", "yes"}
_NEGATIVE = {"0", "0.0", "false", "generalized", "gen", "no"}


def _as_binary(values: pd.Series, name: str) -> np.ndarray:
    out = []
    for v in values.astype(str).str.strip().str.lower():
        if v in _POSITIVE:
            out.append(1)
        elif v in _NEGATIVE:
            out.append(0)
        else:
            raise DiffmemError(f"{name}: label {v!r} is neither memorized (1) nor generalized (0)")
    return np.asarray(out)


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DiffmemError(f"{path}: no such scores file")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pyarrow/pandas raise many types for corrupt files
        raise DiffmemError(f"{path}: not a readable scores table ({type(exc).__name__})") from None


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV or JSONL file with ``label`` and one of ``path``, ``sha256``, ``index`` (the key).

    Labels are 1/memorized or 0/generalized (also ``1.0``/``0.0``, true/false). Rows repeating a key
    with the same label collapse to one; a key with conflicting labels is an error naming its rows.
    Every error names the labels file (``--labels``)."""
    path = Path(path)
    if not path.is_file():
        raise DiffmemError(f"labels={path}: no such labels file")
    try:
        if path.suffix in (".jsonl", ".json"):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            check(all(isinstance(r, dict) for r in rows), f"labels={path}: every line must be a JSON object")
            df = pd.DataFrame(rows)
        else:
            df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, json.JSONDecodeError, pd.errors.ParserError) as exc:
        raise DiffmemError(f"labels={path}: not a readable labels file ({type(exc).__name__})") from None
    check("label" in df.columns, f"labels={path}: needs a 'label' column")
    key = next((k for k in ("sha256", "path", "index") if k in df.columns), None)
    check(key is not None, f"labels={path}: needs a 'sha256', 'path' or 'index' column")
    df = df.assign(y=_as_binary(df["label"], f"labels={path}"), _row=np.arange(len(df)) + (1 if path.suffix in
                                                                                              (".jsonl", ".json") else 2))
    for k, g in df.groupby(key, sort=False):
        if g["y"].nunique() > 1:
            raise DiffmemError(f"labels={path}: {key} {k!r} has conflicting labels on rows "
                               f"{', '.join(map(str, g['_row'].tolist()))}")
    return df.drop_duplicates(key).drop(columns=["_row"]).reset_index(drop=True)


def join_labels(scores: pd.DataFrame, labels: pd.DataFrame | None, name: str) -> pd.DataFrame:
    """Scores with a binary ``y`` column; rows with errors or without a label are dropped."""
    df = scores[scores["error"].isna()] if "error" in scores.columns else scores
    if labels is None:
        check("label" in df.columns and df["label"].notna().any(),
              f"{name}: no labels in the scores table; pass labels=FILE")
        df = df[df["label"].notna()].copy()
        df["y"] = _as_binary(df["label"], name)
        key = next((k for k in ("sha256", "path") if k in df.columns), None)
        for k, g in (df.groupby(key, sort=False) if key else ()):
            if g["y"].nunique() > 1:
                raise DiffmemError(f"{name}: {key} {k!r} is labelled both memorized and generalized (rows "
                                   f"{', '.join(map(str, g.index.tolist()))})")
        return df
    for key in ("sha256", "path", "index"):
        if key in labels.columns and key in df.columns:
            left = df.drop(columns=["label"], errors="ignore").assign(_key=df[key].astype(str))
            right = labels[["label", "y"]].assign(_key=labels[key].astype(str))      # keys compared as text
            merged = left.merge(right, on="_key", how="inner").drop(columns=["_key"])
            check(len(merged) > 0, f"{name}: no score row matches a label by {key} (labels)")
            return merged
    raise DiffmemError(f"{name}: labels need a 'sha256', 'path' or 'index' column present in the scores")


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "ROC") -> Path:
    """ROC curves {name: (scores, y)} on linear and log-FPR axes."""
    from sklearn.metrics import roc_curve
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for name, (s, y) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        for ax in axes:
            ax.plot(np.maximum(fpr, 1e-4), tpr, label=name)
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
    axes[0].legend(fontsize=8)
    axes[0].set_title(title)
    axes[1].set_title("log FPR")
    return save(fig, path)


def plot_kde(scores: np.ndarray, y: np.ndarray, path: Path, title: str = "score") -> Path:
    """Score densities of memorized (1) and generalized (0) images."""
    from scipy.stats import gaussian_kde
    fig, ax = plt.subplots(figsize=(5, 3.4))
    grid = np.linspace(scores.min(), scores.max(), 300) if scores.max() > scores.min() else scores[:1]
    for lab, name, color in ((0, "generalized", "tab:blue"), (1, "memorized", "tab:red")):
        s = scores[y == lab]
        if len(s) > 1 and s.std() > 0:
            ax.plot(grid, gaussian_kde(s)(grid), color=color, label=f"{name} (n={len(s)})")
        ax.hist(s, bins=30, density=True, alpha=0.25, color=color)
    ax.set_xlabel(title)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return save(fig, path)
