"""Whole-video model inputs for training and evaluation, computed by the serving preprocessing and cached.

The cache key covers the file's identity (path, size, mtime), the face mode and the contract
fingerprint, so a changed video or a changed preprocessing recomputes instead of reusing stale arrays.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.contract import INPUT_NAMES, PREPROCESSING, FaceMode, Preprocessing, fingerprint
from workers.decode import VideoDecoder
from workers.preprocess import InputChunk, iter_video_inputs

FIELDS = INPUT_NAMES
# Bump when the feature code changes in a way the contract does not capture (2: audio decoded with PyAV;
# 3: audio placed by its presentation time on the video's timeline).
FEATURE_CODE_VERSION = 3


@dataclass
class VideoArrays:
    video_id: str
    fps: float
    face: np.ndarray  # uint8 [N, crop, crop, 3]
    face_mask: np.ndarray  # bool [N]
    mel: np.ndarray  # float32 [N, M, n_mels]
    audio_mask: np.ndarray  # bool [N]
    labels: np.ndarray  # int64 [N], -1 = unannotated

    def __len__(self) -> int:
        return len(self.labels)


def _cache_key(path: Path, face_mode: str, p: Preprocessing) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{face_mode}|{fingerprint(p)}|{FEATURE_CODE_VERSION}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def main_face(chunk: InputChunk) -> tuple[np.ndarray, np.ndarray]:
    """One face per frame for training on a single stream: the frame's largest present face (face-centred
    input has exactly one). Returns face [n, crop, crop, 3] and face_mask [n]."""
    f = chunk.faces
    face = np.zeros((len(chunk), *f.face.shape[1:]), np.uint8)
    mask = np.zeros(len(chunk), bool)
    area = np.where(f.present, np.nan_to_num(f.box[:, 2] * f.box[:, 3], nan=1.0), -1.0)
    for r in np.argsort(area, kind="stable"):  # largest last: it wins
        if f.present[r]:
            face[f.frame[r]], mask[f.frame[r]] = f.face[r], True
    return face, mask


def compute_inputs(path: Path, face_mode: FaceMode = "centred", p: Preprocessing = PREPROCESSING) -> tuple[dict, float]:
    decoder = VideoDecoder()
    info = decoder.probe(str(path))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
    for chunk in iter_video_inputs(str(path), info, face_mode=face_mode, decoder=decoder, p=p):
        face, face_mask = main_face(chunk)
        for k, v in (("face", face), ("face_mask", face_mask), ("mel", chunk.mel), ("audio_mask", chunk.audio_mask)):
            parts[k].append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}, info.fps


def load_video(path: Path, labels: np.ndarray, cache_dir: Path | None, face_mode: FaceMode = "centred",
               p: Preprocessing = PREPROCESSING) -> VideoArrays:
    """Inputs for one annotated video; ``labels`` must have one entry per decoded frame."""
    arrays: dict | None = None
    cache = cache_dir / f"{path.stem}-{_cache_key(path, face_mode, p)}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            arrays, fps = {k: z[k] for k in FIELDS}, float(z["fps"])
    if arrays is None:
        arrays, fps = compute_inputs(path, face_mode, p)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, fps=fps, **arrays)
            os.replace(tmp, cache)
    n = len(arrays["face_mask"])
    if len(labels) != n:
        raise ValueError(f"{path}: annotation has {len(labels)} frames but the video decodes to {n}; "
                         "ABAW annotation files need exactly one label per frame")
    return VideoArrays(path.stem, fps, labels=np.asarray(labels, np.int64), **arrays)
