"""Which model version a Triton model repository serves, read from its folders (no server, no torch).

Triton's default version policy serves the highest numeric version folder; a folder counts once it holds
the exported model file (version 1 also holds the backend's source). The served version names the output
partition (model_version=<v>), so the driver can tell what is already done before any service starts.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.pt"  # what training/export.py writes into each version folder


def latest_version(model_dir: Path) -> Path | None:
    """The highest version folder of ``model_dir`` that holds a model (what Triton serves), or None."""
    versions = [p for p in model_dir.glob("*") if p.name.isdigit() and (p / MODEL_FILE).exists()]
    return max(versions, key=lambda p: int(p.name), default=None)
