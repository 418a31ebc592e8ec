"""Aligned face crops: a similarity transform (rotation, uniform scale, shift) from five landmarks onto the
contract's template, so every crop has the eyes level and at the same place whatever the head's roll,
size or position. The model's face tensor is derived from the aligned crop here and nowhere else."""

from __future__ import annotations

import cv2
import numpy as np

from workers.contract import ALIGNMENT, PREPROCESSING, FaceAlignment, Preprocessing


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
    for k, lm in enumerate(landmarks):
        m = similarity(lm.astype(np.float64), dst)
        scale = float(np.hypot(m[0, 0], m[1, 0]))
        # Shrinking by more than 2x with bilinear sampling aliases: pre-shrink the frame with an area filter.
        if scale < 0.5:
            f = 1.0 / (2.0 * scale)
            small = cv2.resize(frame, (max(1, round(frame.shape[1] / f)), max(1, round(frame.shape[0] / f))),
                               interpolation=cv2.INTER_AREA)
            m = m.copy()
            m[:, :2] *= f
            src = small
        else:
            src = frame
        cv2.warpAffine(src, m, (a.size, a.size), dst=out[k], flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def model_face(aligned: np.ndarray, p: Preprocessing = PREPROCESSING) -> np.ndarray:
    """The model's face tensor uint8 [k, crop, crop, 3] from aligned crops [k, size, size, 3]."""
    if len(aligned) == 0:
        return np.zeros((0, p.crop_size, p.crop_size, 3), np.uint8)
    if aligned.shape[1] == p.crop_size:
        return aligned
    return np.stack([cv2.resize(c, (p.crop_size, p.crop_size), interpolation=cv2.INTER_AREA) for c in aligned])
