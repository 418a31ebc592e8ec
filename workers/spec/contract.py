"""The model I/O contract: the one place that defines classes, tensors and preprocessing.

Training, export, the Triton config, the client and the docs all read these values; nothing else
repeats them. Changing a value here changes ``CONTRACT_VERSION``'s fingerprint, and a served model
whose fingerprint differs is refused by the client (see ``emoframe.workers.inference.triton_client``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

# ABAW Expression annotation order; ids are positions in this tuple and are fixed.
CLASSES: tuple[str, ...] = (
    "Neutral",
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Other",
)
NUM_CLASSES = len(CLASSES)
UNANNOTATED = -1  # ABAW label for a frame that is left out of every metric


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a decoded video into model inputs. Frozen: one value per model."""

    # Face crops are crop_size x crop_size RGB uint8, derived from the aligned crop (FaceAlignment). 64: the
    # input size of the FER2013 face reader. (Not 48: decord 0.6.0 fails every resize to width 48.)
    crop_size: int = 64
    sample_rate: int = 16000  # audio is resampled to this rate, mono
    n_fft: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 40
    mel_frames: int = 16  # log-mel frames per video frame: 400 + 15 * 160 samples = 175 ms centred on the frame
    log_offset: float = 1e-6  # log(mel + offset)
    silence_dbfs: float = -50.0  # a frame whose audio context is quieter than this has no audio
    blank_std: float = 6.0  # a face crop whose grey-level std is below this is blank (face missing)
    window: int = 32  # T: frames per model window (the stride and voting span are policy: workers/spec/policy.py)

    @property
    def audio_context(self) -> int:
        """Samples of audio that make one frame's ``mel_frames`` log-mel frames (no centre padding)."""
        return self.n_fft + (self.mel_frames - 1) * self.hop_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """From a saved checkpoint's config. Checkpoints before the contract/policy split also carry the
        labelling policy's fields (stride, vote_seconds): they never shaped a tensor, so they are dropped."""
        return cls(**{k: v for k, v in d.items() if k not in ("stride", "vote_seconds")})


PREPROCESSING = Preprocessing()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton dtype name
    shape: tuple[int, ...]  # without the batch dimension

    @property
    def numpy_dtype(self) -> str:
        return {"UINT8": "uint8", "BOOL": "bool", "FP32": "float32"}[self.dtype]


def input_specs(p: Preprocessing = PREPROCESSING) -> tuple[TensorSpec, ...]:
    """Model inputs for one window of T frames. A frame whose mask is False is ignored by the model."""
    return (
        TensorSpec("face", "UINT8", (p.window, p.crop_size, p.crop_size, 3)),  # RGB, HWC
        TensorSpec("face_mask", "BOOL", (p.window,)),
        TensorSpec("mel", "FP32", (p.window, p.mel_frames, p.n_mels)),  # log-mel
        TensorSpec("audio_mask", "BOOL", (p.window,)),
    )


INPUT_NAMES: tuple[str, ...] = tuple(s.name for s in input_specs())  # the order every batch dict and forward use


def output_specs(p: Preprocessing = PREPROCESSING) -> tuple[TensorSpec, ...]:
    return (TensorSpec("probs", "FP32", (p.window, NUM_CLASSES)),)  # softmax per frame


# How frames become faces. detect: raw footage; every face is detected, tracked and aligned (the default).
# centred: the input is already one face filling each frame (ABAW cropped_aligned videos, the synthetic set).
FaceMode = Literal["detect", "centred"]
FACE_MODES: tuple[str, ...] = ("detect", "centred")


@dataclass(frozen=True)
class FaceAlignment:
    """The aligned face crop of raw footage: five landmarks mapped by a similarity transform onto a fixed
    template, like Aff-Wild2's ``cropped_aligned`` frames (112x112 RGB, whole face with a margin). The
    model's face tensor is derived from this crop in one place (``emoframe.workers.media.faces.align.model_face``), so
    the template is part of the contract's fingerprint.
    """

    size: int = 112
    # (x, y) of the eye on the image's left, the other eye, nose tip, left and right mouth corner (image
    # left/right, MTCNN's landmark order), as fractions of ``size``. Inter-ocular distance 0.34 of the width leaves
    # forehead and chin inside the crop, as expression models expect.
    template: tuple[tuple[float, float], ...] = (
        (0.33, 0.40), (0.67, 0.40), (0.50, 0.56), (0.36, 0.72), (0.64, 0.72),
    )


ALIGNMENT = FaceAlignment()


MODEL_NAME = "expression_fusion"
MAX_BATCH_SIZE = 16  # windows per Triton batch


def contract_dict(p: Preprocessing = PREPROCESSING) -> dict:
    return {
        "classes": list(CLASSES),
        "preprocessing": p.to_dict(),
        "face_alignment": dataclasses.asdict(ALIGNMENT),
        "inputs": [dataclasses.asdict(s) for s in input_specs(p)],
        "outputs": [dataclasses.asdict(s) for s in output_specs(p)],
    }


def fingerprint(p: Preprocessing = PREPROCESSING) -> str:
    """Short hash of the whole contract; stored with every exported model and in config.pbtxt."""
    blob = json.dumps(contract_dict(p), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
