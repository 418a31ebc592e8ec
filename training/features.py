"""Whole-video model inputs for training and evaluation, computed by the serving preprocessing and cached.

The cache key covers the file's identity (path, size, mtime), the face mode, the face source (the video, or
a cropped_aligned folder) and the contract fingerprint, so a changed video or a changed preprocessing
recomputes instead of reusing stale arrays.

A cached video is a folder of .npy files that are opened memory-mapped: a dataset the size of Aff-Wild2
(2.6M frames; its face crops alone are over 30 GB) trains without being read into memory. A training step
reads only the windows it samples, and the operating system keeps what fits in its page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoframe.workers.spec.contract import INPUT_NAMES, PREPROCESSING, FaceMode, Preprocessing, fingerprint
from emoframe.workers.media.decode import VideoDecoder
from emoframe.workers.media.preprocess import InputChunk, iter_video_inputs

FIELDS = INPUT_NAMES
# Bump when the feature code changes in a way the contract does not capture (2: audio decoded with PyAV;
# 3: audio placed by its presentation time on the video's timeline).
FEATURE_CODE_VERSION = 3


@dataclass
class VideoArrays:
    video_id: str
    fps: float
    # Read-only memory maps when the video came from the cache.
    face: np.ndarray  # uint8 [N, crop, crop, 3]
    face_mask: np.ndarray  # bool [N]
    mel: np.ndarray  # float32 [N, M, n_mels]
    audio_mask: np.ndarray  # bool [N]
    labels: np.ndarray  # int64 [N], -1 = unannotated

    def __len__(self) -> int:
        return len(self.labels)


def _cache_key(path: Path, face_mode: str, p: Preprocessing, faces_from: Path | None = None) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{face_mode}|{fingerprint(p)}|{FEATURE_CODE_VERSION}"
    if faces_from is not None:  # a folder of crops: its path and when its file list last changed
        ident += f"|{faces_from.resolve()}|{faces_from.stat().st_mtime_ns}"
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _write_cache(folder: Path, arrays: dict[str, np.ndarray], fps: float) -> None:
    """One .npy per field and meta.json, written beside and renamed into place: a reader never sees half."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, v in arrays.items():
        np.save(tmp / f"{k}.npy", v)
    (tmp / "meta.json").write_text(json.dumps({"fps": fps}))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process cached it meanwhile: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(folder: Path) -> tuple[dict[str, np.ndarray], float]:
    arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in FIELDS}
    return arrays, float(json.loads((folder / "meta.json").read_text())["fps"])


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


FaceSource = Callable[[int], tuple[np.ndarray, np.ndarray]]  # n_frames -> (face, face_mask) from elsewhere


def load_video(path: Path, labels: np.ndarray, cache_dir: Path | None, face_mode: FaceMode = "centred",
               p: Preprocessing = PREPROCESSING, *, faces_from: Path | None = None,
               faces: FaceSource | None = None) -> VideoArrays:
    """Inputs for one annotated video; ``labels`` must have one entry per decoded frame. With ``faces``
    (and ``faces_from``, the folder it reads, for the cache key) the face crops come from there, e.g. ABAW's
    cropped_aligned images, instead of the video's own frames. Cached arrays come back memory-mapped."""
    arrays: dict | None = None
    cache = cache_dir / f"{path.stem}-{_cache_key(path, face_mode, p, faces_from)}" if cache_dir else None
    if cache is not None and (cache / "meta.json").exists():
        arrays, fps = _read_cache(cache)
    if arrays is None:
        arrays, fps = compute_inputs(path, face_mode, p)
        if faces is not None:
            arrays["face"], arrays["face_mask"] = faces(len(arrays["face_mask"]))
        if cache is not None:
            _write_cache(cache, arrays, fps)
            arrays, fps = _read_cache(cache)  # memory-mapped, as every later run gets them
    n = len(arrays["face_mask"])
    if len(labels) != n:
        raise ValueError(f"{path}: annotation has {len(labels)} frames but the video decodes to {n}; "
                         "ABAW annotation files need exactly one label per frame")
    return VideoArrays(path.stem, fps, labels=np.asarray(labels, np.int64), **arrays)
