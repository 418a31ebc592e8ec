"""ABAW (Aff-Wild2) expression annotation files: a header line of class names, then one label per video frame.

A label is a class id 0..NUM_CLASSES-1, or UNANNOTATED (-1) for a frame left out of every metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from emoframe.workers.spec.contract import CLASSES, NUM_CLASSES, UNANNOTATED

HEADER = ",".join(CLASSES)


def _check_label(value: int, where: str) -> int:
    if not UNANNOTATED <= value < NUM_CLASSES:
        raise ValueError(f"{where}: label {value} is outside {UNANNOTATED}..{NUM_CLASSES - 1}")
    return value


def write_annotation(path: Path | str, labels: Iterable[int]) -> None:
    """Write one label per frame under the ABAW header."""
    lines = [str(_check_label(int(v), f"{path} frame {i}")) for i, v in enumerate(labels)]
    Path(path).write_text("\n".join([HEADER, *lines]) + "\n")


def read_annotation(path: Path | str) -> np.ndarray:
    """Read an ABAW annotation file into an int64 array with one entry per frame."""
    lines = Path(path).read_text().splitlines()
    while lines and not lines[-1].strip():  # tolerate trailing blank lines, nothing else
        lines.pop()
    if not lines or lines[0].strip() != HEADER:
        first = lines[0].strip() if lines else "<empty file>"
        raise ValueError(f"{path}: first line must be the class names {HEADER!r}, got {first!r}")
    labels = np.empty(len(lines) - 1, dtype=np.int64)
    for i, line in enumerate(lines[1:]):
        where = f"{path} line {i + 2}"
        try:
            value = int(line.strip())
        except ValueError:
            raise ValueError(f"{where}: expected an integer label, got {line!r}") from None
        labels[i] = _check_label(value, where)
    return labels
