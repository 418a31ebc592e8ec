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

    def read_frames(self, path: str, indices: list[int], width: int, height: int) -> np.ndarray:
        """uint8 [len(indices), height, width, 3] RGB frames at the given indices (a sample, not a stream)."""
        ...

    def read_audio(self, path: str, sample_rate: int) -> AudioStream | None:
        """The audio track as mono float32 samples at ``sample_rate`` (streamed), or None without one."""
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

    def read_frames(self, path: str, indices: list[int], width: int, height: int) -> np.ndarray:
        vr = _open_video(path, width=width, height=height)
        if not _decoder_resize_works(vr):
            vr = _open_video(path)
            return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
                             for f in vr.get_batch(indices).asnumpy()])
        return vr.get_batch(indices).asnumpy()

    def frame_times(self, path: str) -> np.ndarray:
        vr = _open_video(path)
        n = len(vr)
        times = np.empty(n, np.float64)
        for s in range(0, n, 4096):  # reads the index only, no decoding
            times[s : s + 4096] = vr.get_frame_timestamp(list(range(s, min(n, s + 4096))))[:, 0]
        return times

    def read_audio(self, path: str, sample_rate: int) -> AudioStream | None:
        # Not decord's AudioReader: it decodes the whole track at the source rate before resampling
        # (+660 MB peak for a 10-minute 48 kHz stereo track). PyAV's decoder + libswresample stream it.
        try:
            container = av.open(path)
        except av.error.FFmpegError as exc:
            raise BadInputError("audio_decode_error", f"audio of {path} could not be read ({exc})") from None
        if not container.streams.audio:
            container.close()
            return None
        return AudioStream(container, sample_rate)


class AudioStream:
    """Mono float32 samples at ``sample_rate``, decoded forward on demand; samples before the last
    ``release`` are dropped, so memory stays bounded for any length (reads must move forward)."""

    def __init__(self, container: av.container.InputContainer, sample_rate: int):
        self._container = container
        self._frames = container.decode(container.streams.audio[0])
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # sample index of _buf[0]
        self._done = False

    def _decode_until(self, end: int) -> None:
        parts = [self._buf]
        have = self._start + len(self._buf)
        while have < end and not self._done:
            try:
                frame = next(self._frames)
                out = self._resampler.resample(frame)
            except StopIteration:
                out = self._resampler.resample(None)
                self._done = True
                self._container.close()
            except av.error.FFmpegError as exc:
                raise BadInputError("audio_decode_error", f"the audio track could not be decoded ({exc})") from None
            for r in out:
                a = r.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                parts.append(a)
                have += len(a)
        if len(parts) > 1:
            self._buf = np.concatenate(parts)

    def get(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi), zeros where the track has none (before 0, past its end)."""
        if max(lo, 0) < self._start:
            raise ValueError(f"audio sample {lo} was already released (stream is at {self._start})")
        self._decode_until(hi)
        out = np.zeros(hi - lo, np.float32)
        a, b = max(lo, self._start), min(hi, self._start + len(self._buf))
        if b > a:
            out[a - lo : b - lo] = self._buf[a - self._start : b - self._start]
        return out

    def release(self, before: int) -> None:
        drop = min(max(0, before - self._start), len(self._buf))
        if drop:
            self._buf = self._buf[drop:].copy()
            self._start += drop

    def read_all(self) -> np.ndarray:
        self._decode_until(1 << 62)
        return self._buf[: len(self._buf)]
