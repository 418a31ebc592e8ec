"""Video and audio decoding behind a small interface (decord today).

Frames are resized inside the decoder and read in chunks, so memory stays bounded for any video
length. A missing audio stream is not an error: ``read_audio`` returns None.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np
import torch  # noqa: F401  -- imported before decord: the other order can crash at import on some builds

import decord  # noqa: E402

from workers.errors import BadInputError  # noqa: E402


CORRUPT_FRAME_TOLERANCE = 1e-9  # fraction of frames decord may "recover" by repetition: effectively none


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0


class Decoder(Protocol):
    """What the pipeline needs from a decoder; tests inject hangs and crashes through it."""

    def probe(self, path: str) -> VideoInfo: ...

    def iter_frames(self, path: str, width: int, height: int, chunk: int) -> Iterator[np.ndarray]:
        """Yields uint8 [n, height, width, 3] RGB chunks covering every frame in order."""
        ...

    def read_audio(self, path: str, sample_rate: int) -> np.ndarray | None:
        """Mono float32 samples in [-1, 1] at ``sample_rate``, or None when there is no audio stream."""
        ...

    def frame_times(self, path: str) -> np.ndarray:
        """Presentation time (s) of every frame's start: right for variable frame rate, unlike index / fps."""
        ...


def _open_video(path: str, **kwargs) -> decord.VideoReader:
    if not Path(path).is_file():
        raise BadInputError("not_found", f"{path} does not exist or is not a file")
    if Path(path).stat().st_size == 0:
        raise BadInputError("empty_file", f"{path} is empty (0 bytes)")
    try:
        # decord's default (fault_tol=-1) silently repeats an earlier frame in place of each frame it cannot
        # decode; a tolerance just above zero makes the first such frame raise instead, so it is reported.
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, fault_tol=CORRUPT_FRAME_TOLERANCE,
                                  **kwargs)
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:  # decord asserts on a 0-frame stream
        raise BadInputError("not_a_video", f"{path} has no decodable video stream ({exc})") from None


def _decoder_resize_works(vr: decord.VideoReader) -> bool:
    try:
        vr.get_batch([0])
    except decord.DECORDError as exc:
        if "size must exactly match" in str(exc):
            return False
        raise
    finally:
        vr.seek(0)
    return True


class DecordDecoder:
    def probe(self, path: str) -> VideoInfo:
        vr = _open_video(path)
        n = len(vr)
        if n == 0:
            raise BadInputError("no_frames", f"{path} has a video stream with no frames")
        h, w = vr[0].shape[:2]
        fps = float(vr.get_avg_fps())
        if not np.isfinite(fps) or fps <= 0:
            raise BadInputError("bad_fps", f"{path} reports a frame rate of {fps}")
        return VideoInfo(n_frames=n, fps=fps, width=int(w), height=int(h), has_audio=self._has_audio(path))

    @staticmethod
    def _has_audio(path: str) -> bool:
        try:
            with av.open(path) as c:
                return bool(c.streams.audio)
        except av.error.FFmpegError:
            return False

    def iter_frames(self, path: str, width: int, height: int, chunk: int) -> Iterator[np.ndarray]:
        vr = _open_video(path, width=width, height=height)
        resize = None
        if not _decoder_resize_works(vr):
            # decord 0.6.0 fails some output sizes (every width 48, for one); decode at native size instead
            # and resize here, which gives the same frames at a little more cost.
            vr = _open_video(path)
            resize = (width, height)
        n = len(vr)
        for start in range(0, n, chunk):
            idx = list(range(start, min(n, start + chunk)))
            try:
                frames = vr.get_batch(idx).asnumpy()
            except decord.DECORDLimitReachedError as exc:
                raise BadInputError("corrupt_frames", f"frames {idx[0]}-{idx[-1]} include corrupt frames that the "
                                    f"decoder could only replace by earlier ones ({exc}); re-encode the file") from None
            except (decord.DECORDError, RuntimeError) as exc:
                raise BadInputError("decode_error", f"frames {idx[0]}-{idx[-1]} could not be decoded "
                                    f"({str(exc).splitlines()[0][:300]})") from None
            if resize is not None:
                frames = np.stack([cv2.resize(f, resize, interpolation=cv2.INTER_AREA) for f in frames])
            yield frames

    def frame_times(self, path: str) -> np.ndarray:
        vr = _open_video(path)
        n = len(vr)
        times = np.empty(n, np.float64)
        for s in range(0, n, 4096):  # reads the index only, no decoding
            times[s : s + 4096] = vr.get_frame_timestamp(list(range(s, min(n, s + 4096))))[:, 0]
        return times

    def read_audio(self, path: str, sample_rate: int) -> np.ndarray | None:
        # Not decord's AudioReader: it decodes the whole track at the source rate before resampling
        # (+660 MB peak for a 10-minute 48 kHz stereo track). PyAV's decoder + libswresample stream it,
        # keeping only the 16 kHz mono result (38 MB for 10 minutes).
        try:
            container = av.open(path)
        except av.error.FFmpegError as exc:
            raise BadInputError("audio_decode_error", f"audio of {path} could not be read ({exc})") from None
        with container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            parts: list[np.ndarray] = []
            try:
                for frame in container.decode(stream):
                    parts.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
                parts.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
            except av.error.FFmpegError as exc:
                raise BadInputError("audio_decode_error", f"audio of {path} could not be decoded ({exc})") from None
        if not parts:
            return None
        return np.concatenate(parts).astype(np.float32, copy=False)
