"""The labelling policy: how one run turns the model's window outputs into per-frame labels.

The contract (workers/spec/contract.py) fixes what shapes the tensors, so changing it means exporting a new model.
Nothing here shapes a tensor: the window stride, the soft-voting span and whether the audio branch is
listened to can change from one run to the next with the same model file. Each run records its policy in
the videos table, and a rerun under another policy relabels instead of skipping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class LabellingPolicy:
    stride: int = 16  # S: hop between model windows; frames covered by several windows average them
    vote_seconds: float = 0.6  # soft-voting span: probabilities averaged over this centred span (0 = off)
    # Whether the model hears the audio. Off by default: the deployed audio branch learned the synthetic set's
    # tones, not speech, and on real footage with sound it pulled clear smiles off Happiness (issue 8). A frame
    # without a face then has no evidence and no label. Turn on for data like what the audio branch learned.
    audio: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride must be a whole number of frames >= 1, not {self.stride!r}")
        if not (self.vote_seconds >= 0.0):  # also refuses NaN
            raise ValueError(f"vote_seconds must be >= 0, not {self.vote_seconds!r}")

    def check_window(self, window: int) -> None:
        """A stride longer than the model's window would leave frames no window covers."""
        if self.stride > window:
            raise ValueError(f"stride {self.stride} is longer than the model's window of {window} frames: "
                             f"choose a stride between 1 and {window}")

    def vote_frames(self, fps: float) -> int:
        """Soft-voting span in frames for a video at ``fps`` (odd, at least 1)."""
        n = max(1, int(round(self.vote_seconds * fps)))
        return n if n % 2 == 1 else n + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return f"stride {self.stride}, voting over {self.vote_seconds:g} s, audio {'on' if self.audio else 'off'}"


POLICY = LabellingPolicy()
# The synthetic set's tones are what the audio branch learned: it is measured there with audio on.
SYNTHETIC_POLICY = dataclasses.replace(POLICY, audio=True)
