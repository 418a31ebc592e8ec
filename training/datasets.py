"""Datasets in the ABAW / Aff-Wild2 layout (the synthetic set uses the same layout).

    <annotations>/<id>.txt          header line of class names, then one label per frame (-1 = unannotated)
    <videos>/<video>.(mp4|avi|...)  <video> is <id>, or <id> without a _left/_right suffix (two-person videos)
    <cropped>/<id>/00001.jpg ...    optional cropped_aligned frames, 1-based; a missing image = face missing
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from emoframe.training.abaw_format import read_annotation
from emoframe.training.features import VideoArrays, load_video
from emoframe.workers.spec.contract import PREPROCESSING, Preprocessing
from emoframe.workers.media.faces.align import model_face

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")


@dataclass(frozen=True)
class Item:
    video_id: str
    video: Path
    annotation: Path
    cropped: Path | None  # cropped_aligned folder of this id, when the dataset has one


def find_video(videos: Path, video_id: str) -> Path | None:
    names = [video_id]
    for suffix in ("_left", "_right"):
        if video_id.endswith(suffix):
            names.append(video_id[: -len(suffix)])
    for name in names:
        for ext in VIDEO_EXTENSIONS:
            if (videos / f"{name}{ext}").is_file():
                return videos / f"{name}{ext}"
    return None


def discover(annotations: Path, videos: Path, cropped: Path | None = None) -> list[Item]:
    """All annotated videos; an annotation without its video is an error (a silently smaller set is worse)."""
    if not annotations.is_dir():
        raise FileNotFoundError(f"annotation folder {annotations} does not exist")
    items, missing = [], []
    for ann in sorted(annotations.glob("*.txt")):
        video = find_video(videos, ann.stem)
        if video is None:
            missing.append(ann.stem)
            continue
        crop_dir = cropped / ann.stem if cropped is not None else None
        items.append(Item(ann.stem, video, ann, crop_dir))
    if missing:
        raise FileNotFoundError(f"{len(missing)} annotation files have no video in {videos}: {missing[:5]}")
    if not items:
        raise FileNotFoundError(f"no *.txt annotation files in {annotations}")
    return items


def synth_split(root: Path) -> list[Item]:
    """A split written by ``emoframe synth``: <root>/annotations and <root>/videos."""
    return discover(root / "annotations", root / "videos")


def cropped_faces(folder: Path, n_frames: int, p: Preprocessing = PREPROCESSING) -> tuple[np.ndarray, np.ndarray]:
    """Face crops and mask from a cropped_aligned folder; frame i is ``{i+1:05d}.jpg``."""
    face = np.zeros((n_frames, p.crop_size, p.crop_size, 3), np.uint8)
    mask = np.zeros(n_frames, bool)
    for i in range(n_frames):
        img = cv2.imread(str(folder / f"{i + 1:05d}.jpg"), cv2.IMREAD_COLOR)
        if img is None:
            continue  # missing or unreadable image: the face is missing in this frame
        # cropped_aligned images are aligned crops: the model's tensor comes from them as serving derives it
        # from its own aligned crops.
        face[i] = model_face(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[None], p)[0]
        mask[i] = True
    return face, mask


def load_items(items: list[Item], cache_dir: Path | None, desc: str = "features",
               p: Preprocessing = PREPROCESSING) -> list[VideoArrays]:
    out = []
    for item in tqdm(items, desc=desc, unit="video", leave=False):
        crops = item.cropped
        out.append(load_video(item.video, read_annotation(item.annotation), cache_dir, "centred", p,
                              faces_from=crops,
                              faces=None if crops is None else partial(cropped_faces, crops, p=p)))
    return out
