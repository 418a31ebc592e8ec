"""MTCNN face detection with five landmarks (Zhang et al., "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", 2016), on the CPU with onnxruntime.

Three small networks in cascade: P-Net proposes face windows over an image pyramid, R-Net rejects most of
them, O-Net scores the rest and gives a refined box plus five landmarks (eyes, nose tip, mouth corners).
The networks are written in mtcnn_nets.py; their weights are the original authors' (see weights.py).
O-Net alone, run on last frame's boxes, is what the tracker uses between full detections: it costs well
under a millisecond per face instead of a pyramid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from emoframe.workers.media.faces.mtcnn_nets import Net, load_nets
from emoframe.workers.media.faces.weights import MTCNN_WEIGHT_FILE, MTCNN_WEIGHTS, weight_path

_MEAN, _SCALE = 127.5, 1.0 / 128.0  # the networks' input normalisation


@dataclass
class Faces:
    """Faces found in one frame, in that frame's pixel coordinates."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x0, y0, x1, y1
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # O-Net face probability
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))  # (x, y) each

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray) -> Faces:
        return Faces(self.boxes[idx], self.scores[idx], self.landmarks[idx])

    def scaled(self, s: float) -> Faces:
        return Faces(self.boxes * s, self.scores, self.landmarks * s)


@lru_cache(maxsize=1)
def _nets() -> tuple[Net, Net, Net]:  # P-, R-, O-Net
    nets = load_nets(weight_path(MTCNN_WEIGHTS, MTCNN_WEIGHT_FILE))
    # onnxruntime plans each input shape on its first run: here, where the networks are loaded (the isolation
    # forkserver), and not in each video's child.
    nets[0](np.zeros((1, 3, 48, 64), np.float32))
    nets[1](np.zeros((2, 3, 24, 24), np.float32))
    nets[2](np.zeros((2, 3, 48, 48), np.float32))
    return nets


# ---- box arithmetic (numpy; a few hundred boxes at most) ------------------------------------------------


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first. ``mode="min"`` divides the
    overlap by the smaller box (drops a box nested in a better one)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0) * (y1 - y0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / np.maximum(denom, 1e-9) <= threshold]
    return np.asarray(keep, np.int64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` [n, 4] with every box in ``b`` [m, 4]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)).astype(np.float32)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
    return boxes + offsets * np.concatenate([wh, wh], 1)


def squared(boxes: np.ndarray, grow: float = 1.0) -> np.ndarray:
    """Each box as a square around its centre, side = longer side x ``grow``."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * grow / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], 1)


def shrink(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``img`` resized to width x height. Large reductions halve with a Gaussian pyramid first: OpenCV's
    area filter is slow at non-integer ratios (0.8 ms for a 285 px face to 48 px, 0.2 ms this way)."""
    while img.shape[1] >= 2 * width and img.shape[0] >= 2 * height:
        img = cv2.pyrDown(img)
    interp = cv2.INTER_AREA if img.shape[1] > width else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def _normalised(images: np.ndarray) -> np.ndarray:
    """uint8 [n, h, w, 3] -> the networks' float32 [n, 3, h, w] input."""
    return (images.transpose(0, 3, 1, 2).astype(np.float32, order="C") - _MEAN) * _SCALE


def _patches(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box cut from ``img`` (zero outside the frame) and resized to size x size: a normalised NCHW batch."""
    h, w = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(np.int64)):
        bw, bh = max(1, x1 - x0), max(1, y1 - y0)
        if x0 >= 0 and y0 >= 0 and x0 + bw <= w and y0 + bh <= h:
            roi = img[y0 : y0 + bh, x0 : x0 + bw]
        else:
            roi = np.zeros((bh, bw, 3), np.uint8)
            sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + bw), min(h, y0 + bh)
            if sx1 > sx0 and sy1 > sy0:
                roi[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
        out[k] = shrink(roi, size, size)
    return _normalised(out)


# ---- the cascade -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorSettings:
    # Smallest face found, as a fraction of the image's short side (1/15: 24 px in 360p, 48 px in 720p;
    # smaller faces carry too little for an expression), and never below ``min_face_px``. It sets the
    # pyramid's first level, which is most of the cost.
    min_face_frac: float = 1 / 15
    min_face_px: float = 20.0
    factor: float = 0.709  # pyramid step (area halves every two levels)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-Net face probability


class MTCNN:
    """``detect`` runs the whole cascade; ``refine`` runs O-Net on given boxes (the tracker's step)."""

    def __init__(self, settings: DetectorSettings = DetectorSettings()) -> None:
        self.s = settings
        self.pnet, self.rnet, self.onet = _nets()

    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / max(self.s.min_face_px, self.s.min_face_frac * min(h, w))
        side = min(h, w) * m
        scales = []
        while side >= 12:
            scales.append(m)
            m *= self.s.factor
            side *= self.s.factor
        return scales

    def _propose(self, img: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: candidate boxes [n, 5] (x0, y0, x1, y1, score)."""
        h, w = img.shape[:2]
        found = []
        level = img
        for scale in self._scales(h, w):
            sw, sh = math.ceil(w * scale), math.ceil(h * scale)
            # Each level from the one above it: a 0.71 step needs no area filter (that costs 20 ms a frame).
            level = shrink(img, sw, sh) if level is img else cv2.resize(level, (sw, sh), interpolation=cv2.INTER_LINEAR)
            prob, reg = self.pnet(_normalised(level[None]))
            prob, reg = prob[0, 1], reg[0]
            ys, xs = np.nonzero(prob >= self.s.thresholds[0])
            if len(ys) == 0:
                continue
            cells = np.stack([xs, ys, xs, ys], 1).astype(np.float32) * 2 + np.array([0, 0, 12, 12], np.float32)
            boxes = _regress(cells / scale, reg[:, ys, xs].T)
            scores = prob[ys, xs]
            keep = nms(cells, scores, 0.5)  # per level, on the unregressed grid
            found.append(np.concatenate([boxes[keep], scores[keep, None]], 1))
        if not found:
            return np.zeros((0, 5), np.float32)
        cand = np.concatenate(found)
        return cand[nms(cand[:, :4], cand[:, 4], 0.7)]

    def _output(self, img: np.ndarray, boxes: np.ndarray) -> Faces:
        """O-Net on square ``boxes``: refined boxes, scores and landmarks, unfiltered."""
        if len(boxes) == 0:
            return Faces()
        prob, reg, lm = self.onet(_patches(img, boxes, 48))
        score = prob[:, 1]
        wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        lms = np.stack([boxes[:, None, 0] + wh[:, None, 0] * lm[:, :5], boxes[:, None, 1] + wh[:, None, 1] * lm[:, 5:]],
                       axis=2)
        return Faces(_regress(boxes, reg).astype(np.float32), score.astype(np.float32), lms.astype(np.float32))

    def detect(self, img: np.ndarray) -> Faces:
        """All faces in an RGB uint8 image, best score first."""
        cand = self._propose(img)
        if not len(cand):
            return Faces()
        boxes = squared(cand[:, :4])
        prob, reg = self.rnet(_patches(img, boxes, 24))
        keep = prob[:, 1] >= self.s.thresholds[1]
        score = prob[keep, 1]
        boxes = _regress(boxes[keep], reg[keep])
        boxes = boxes[nms(boxes, score, 0.7)]
        faces = self._output(img, squared(boxes))
        faces = faces.take(np.flatnonzero(faces.scores >= self.s.thresholds[2]))
        return faces.take(nms(faces.boxes, faces.scores, 0.7, mode="min"))

    def refine(self, img: np.ndarray, boxes: np.ndarray) -> Faces:
        """O-Net on ``boxes`` (last frame's faces) in ``img``: one refined face per box, scores unfiltered."""
        return self._output(img, squared(boxes))
