"""Aligned face crops: a similarity transform (rotation, uniform scale, shift) from five landmarks onto the
contract's template, so every crop has the eyes level and at the same place whatever the head's roll,
size or position. The model's face tensor is derived from the aligned crop here and nowhere else."""

from __future__ import annotations

import cv2
import numpy as np

from emoframe.workers.spec.contract import ALIGNMENT, PREPROCESSING, FaceAlignment, Preprocessing


def template_px(a: FaceAlignment = ALIGNMENT) -> np.ndarray:
    return np.asarray(a.template, np.float64) * a.size


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform [2, 3] taking points ``src`` [n, 2] onto ``dst`` [n, 2].

    Points as complex numbers: dst ~ m * src + t with m = s * exp(i * angle), solved in closed form.
    """
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    m = np.vdot(zc, wc) / max(np.vdot(zc, zc).real, 1e-12)  # vdot conjugates its first argument
    t = w.mean() - m * z.mean()
    return np.array([[m.real, -m.imag, t.real], [m.imag, m.real, t.imag]], np.float64)


def align_faces(frame: np.ndarray, landmarks: np.ndarray, a: FaceAlignment = ALIGNMENT) -> np.ndarray:
    """Aligned crops uint8 [k, size, size, 3] of the faces whose landmarks [k, 5, 2] are given (frame pixels).
    Parts of the crop outside the frame are black."""
    out = np.zeros((len(landmarks), a.size, a.size, 3), np.uint8)
    dst = template_px(a)
    h, w = frame.shape[:2]
    corners = np.array([[0, 0], [a.size, 0], [0, a.size], [a.size, a.size]], np.float64)
    for k, lm in enumerate(landmarks):
        m = similarity(lm.astype(np.float64), dst)
        # Only the part of the frame the crop covers is sampled: its bounding box, mapped back.
        inv = cv2.invertAffineTransform(m)
        src_pts = corners @ inv[:, :2].T + inv[:, 2]
        x0, y0 = np.floor(src_pts.min(0)).astype(int)
        x1, y1 = np.ceil(src_pts.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            continue  # the face is wholly outside the frame: a black crop
        roi = frame[y0:y1, x0:x1]
        m = m.copy()
        m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)  # ROI coordinates
        # Shrinking by more than 2x with bilinear sampling aliases: halve the ROI with a Gaussian pyramid
        # first (an area filter at the exact ratio costs 3 ms a face on a 640 px frame; this 0.2 ms).
        while np.hypot(m[0, 0], m[1, 0]) < 0.5 and min(roi.shape[:2]) >= 4:
            roi = cv2.pyrDown(roi)
            m[:, :2] *= 2.0
        # cv2's stubs want a sequence for borderValue; OpenCV takes a plain number too.
        cv2.warpAffine(roi, m, (a.size, a.size), dst=out[k], flags=cv2.INTER_LINEAR,  # type: ignore[call-overload]
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def model_face(aligned: np.ndarray, p: Preprocessing = PREPROCESSING) -> np.ndarray:
    """The model's face tensor uint8 [k, crop, crop, 3] from aligned crops [k, size, size, 3]."""
    if len(aligned) == 0:
        return np.zeros((0, p.crop_size, p.crop_size, 3), np.uint8)
    if aligned.shape[1] == p.crop_size:
        return aligned
    return np.stack([cv2.resize(c, (p.crop_size, p.crop_size), interpolation=cv2.INTER_AREA) for c in aligned])
