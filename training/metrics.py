"""The ABAW Expression metric and friends. Frames labelled -1 are excluded everywhere."""

from __future__ import annotations

import numpy as np

from emoframe.workers.spec.contract import NUM_CLASSES, UNANNOTATED


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """[true, predicted] counts over annotated frames."""
    keep = y_true != UNANNOTATED
    return np.bincount(y_true[keep] * n + y_pred[keep], minlength=n * n).reshape(n, n)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # = 2tp + fp + fn
    # A class absent from both truth and prediction scores 0, as in the challenge's sklearn-based scorer.
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def summarize(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    cm = confusion(y_true, y_pred)
    f1 = per_class_f1(cm)
    total = cm.sum()
    return {
        "macro_f1": float(f1.mean()),
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "per_class_f1": [float(v) for v in f1],
        "confusion": cm.tolist(),
        "frames": int(total),
    }
