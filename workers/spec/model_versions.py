"""Which model version a Triton model repository serves, read from its folders (no server, no torch).

Triton's default version policy serves the highest numeric version folder; a folder counts once it holds
the exported model file (beside a copy of the backend's source, workers/serving/triton_backend.py). The served
version names the output partition (model_version=<v>), so the driver can tell what is already done before any
service starts.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_FILE = "model.pt"  # what training/export.py writes into each version folder
MODEL_REPO_SETTING = "EMOFRAME_MODEL_REPO"
# A source checkout's repository: the default when the setting is absent (an installed package has none).
CHECKOUT_MODEL_REPO = Path(__file__).resolve().parents[2] / "model_repo"


def default_model_repo() -> Path:
    """The Triton model repository served when a command names none: the EMOFRAME_MODEL_REPO setting, else
    the checkout's model_repo/."""
    setting = os.environ.get(MODEL_REPO_SETTING, "").strip()
    return Path(setting).expanduser() if setting else CHECKOUT_MODEL_REPO


def latest_version(model_dir: Path) -> Path | None:
    """The highest version folder of ``model_dir`` that holds a model (what Triton serves), or None."""
    versions = [p for p in model_dir.glob("*") if p.name.isdigit() and (p / MODEL_FILE).exists()]
    return max(versions, key=lambda p: int(p.name), default=None)
