"""Video and audio decoding behind one interface: decord where it reads a file right, PyAV for the rest.

``VideoDecoder.probe`` reads the container once with PyAV (demuxing, no decoding) and picks the decoder
per file: decord (frames resized in the decoder, fast) for MP4/MOV, Matroska/WebM and AVI files whose
frames it counts as FFmpeg displays them; PyAV for everything else (MPEG-TS and other unindexed
containers, edit lists that hide frames, files cut short, codecs decord's FFmpeg lacks such as AV1).
Raw footage read for the face detector (``fast_scale``) from a file decord reads is decoded by PyAV instead
and shrunk from its YUV planes (workers/media/yuv_rgb.py), at under half decord's CPU, each frame placed by
decord's timestamps; decord keeps what that cannot convert exactly (rotations, other pixel formats).

Time zero is the presentation time of the first displayed video frame: ``frame_times`` starts at 0 and
``read_audio`` places each audio sample at its own presentation time on that same timeline (silence
before the audio starts and after it ends), whatever the streams' start times in the container.
Frames are read in chunks and audio is streamed, so memory stays bounded for any video length. A
missing audio stream is not an error: ``read_audio`` returns None.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, cast, overload

import av
import av.logging
import cv2
import decord
import numpy as np

from emoframe.workers.media.read_ahead import read_ahead
from emoframe.workers.media.yuv_rgb import convertible, frame_rgb
from emoframe.workers.spec.errors import BadInputError, Reason


CORRUPT_FRAME_TOLERANCE = 1e-9  # fraction of frames decord may "recover" by repetition: effectively none
# Containers with an index, where decord's frame count and seeking hold; MPEG-TS and other streams
# without one make decord fail at the end of the file.
DECORD_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int  # frames decoded (what FFmpeg displays: edit lists applied, a cut-short tail missing)
    fps: float
    width: int
    height: int
    has_audio: bool
    # Frames the container declares (its index, less the frames an edit list hides); None where it
    # declares no count (Matroska, MPEG-TS). More than n_frames: the file lost frames (cut short, damaged).
    frames_expected: int | None = None

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0


class Decoder(Protocol):
    """What the pipeline needs from a decoder; tests inject hangs and crashes through it."""

    def probe(self, path: str) -> VideoInfo: ...

    def iter_frames(self, path: str, width: int, height: int, chunk: int, start: int = 0,
                    stop: int | None = None, fast_scale: bool = False) -> Iterator[np.ndarray]:
        """Yields uint8 [n, height, width, 3] RGB chunks covering frames [start, stop) (default: every frame)
        in order; a chunk starts at ``start`` + a multiple of ``chunk``. ``fast_scale``: shrink from the
        decoder's YUV planes where the file allows (workers/media/yuv_rgb.py; pixels within a few grey levels
        of the decoder's scaling, at under half the CPU)."""
        ...

    def read_frames(self, path: str, indices: list[int], width: int, height: int) -> np.ndarray:
        """uint8 [len(indices), height, width, 3] RGB frames at the given indices (a sample, not a stream)."""
        ...

    def read_audio(self, path: str, sample_rate: int) -> AudioStream | None:
        """The audio track as mono float32 samples at ``sample_rate`` on the frames' timeline (sample k is
        at k / sample_rate s from the first frame's presentation), streamed; None without a track."""
        ...

    def frame_times(self, path: str) -> np.ndarray:
        """Presentation time (s) of every frame's start from the first frame's (so times[0] == 0): right
        for variable frame rate, unlike index / fps."""
        ...


# ---- the container, as FFmpeg sees it ------------------------------------------------------------


@dataclass(frozen=True)
class _Container:
    """What one demuxing pass over the video stream tells (no decoding)."""

    format: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "mpegts"
    codec: str
    declared: int | None  # frames the container's index declares; None without one
    hidden: int  # packets an edit list hides (FFmpeg reads but does not display them)
    packets: int  # displayed packets read before the data ended
    start_s: float  # the video stream's start time in the container
    fps: float  # FFmpeg's average frame rate, 0 when unknown
    has_audio: bool
    demux_error: str | None  # why demuxing stopped before the end, if it did

    @property
    def expected(self) -> int | None:
        return self.declared - self.hidden if self.declared else None

    @property
    def short(self) -> bool:
        return self.demux_error is not None or (self.expected is not None and self.packets < self.expected)


_BOX = re.compile(rb"[a-z0-9 ]{4}")
_MP4_TOP_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"moof"}


def _mp4_cut_short(path: str) -> str | None:
    """Why an MP4/MOV file that FFmpeg cannot open looks cut short (a box runs past the end of the file, or
    the index box, moov, is missing), or None when it does not look like MP4 at all."""
    size = Path(path).stat().st_size
    pos = 0
    seen: list[bytes] = []  # the kinds of the boxes read so far
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            n, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if not _BOX.fullmatch(kind) or (not seen and kind not in _MP4_TOP_BOXES):
                break
            if n == 1 and len(head) >= 16:
                n = int.from_bytes(head[8:16], "big")
            elif n == 0:
                n = size - pos  # the box runs to the end of the file
            if n < 8:
                break
            seen.append(kind)
            if pos + n > size:
                return f"its {kind.decode()} box declares {n} bytes but the file ends {pos + n - size} bytes early"
            pos += n
    if not seen:
        return None
    return None if b"moov" in seen or b"moof" in seen else "it has no index (moov box)"


def _codec_without_decoder(path: str, index: int) -> str:
    """The codec FFmpeg names for a stream it has no decoder for (PyAV exposes no codec without one; FFmpeg's
    log line while opening names it)."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture() as logs, av.open(path):
            pass
    finally:
        av.logging.set_level(level)
    for _, _, line in logs:
        m = re.search(rf"stream {index} \(Video: ([^,]+)", line)
        if m:
            return m.group(1).strip()
    return "unknown"


def _inspect(path: str) -> _Container:
    """One demuxing pass over the video stream (reads the file, decodes nothing)."""
    try:
        container = av.open(path)
    except av.error.FFmpegError as exc:
        why = _mp4_cut_short(path)
        if why:
            raise BadInputError(Reason.TRUNCATED, f"{path} was cut short: {why}, so nothing in it can be decoded; "
                                "copy or download it again") from None
        raise BadInputError(Reason.NOT_A_VIDEO, f"{path} is not a video FFmpeg can read ({exc})") from None
    with container:
        video = _video_stream(container)
        if video is None:
            raise BadInputError(Reason.NOT_A_VIDEO, f"{path} has no video stream")
        if video.codec_context is None:
            codec = _codec_without_decoder(path, video.index)
            raise BadInputError(Reason.UNSUPPORTED_CODEC, f"{path}: its video codec, {codec}, has no decoder in this "
                                "build of FFmpeg; re-encode it (e.g. to H.264)")
        tb = float(video.time_base or 0)
        packets = hidden = 0
        error = None
        try:
            for packet in container.demux(video):
                if packet.size:
                    packets += 1
                    hidden += bool(packet.is_discard)
        except av.error.FFmpegError as exc:
            error = str(exc)
        rate = video.average_rate or video.guessed_rate
        return _Container(format=container.format.name, codec=video.codec_context.name,
                          declared=video.frames or None, hidden=hidden, packets=packets - hidden,
                          start_s=(video.start_time or 0) * tb, fps=float(rate) if rate else 0.0,
                          has_audio=_audio_stream(container) is not None, demux_error=error)


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    try:
        return container.streams.best("video")  # type: ignore[return-value]  # PyAV's stubs: a Stream for any type
    except (ValueError, av.error.FFmpegError):
        return container.streams.video[0] if container.streams.video else None


def _audio_stream(container: av.container.InputContainer) -> av.AudioStream | None:
    """The audio track to hear: FFmpeg's pick among those it can decode (None: the video is treated as silent)."""
    best: av.AudioStream | None
    try:
        best = container.streams.best("audio")  # type: ignore[assignment]  # PyAV's stubs: a Stream for any type
    except (ValueError, av.error.FFmpegError):
        best = None
    usable = [a for a in ([best] if best is not None else []) + list(container.streams.audio) if a.codec_context]
    return usable[0] if usable else None


def _check_file(path: str) -> None:
    if not Path(path).is_file():
        raise BadInputError(Reason.NOT_FOUND, f"{path} does not exist or is not a file")
    if Path(path).stat().st_size == 0:
        raise BadInputError(Reason.EMPTY_FILE, f"{path} is empty (0 bytes)")


def _check_fps(path: str, fps: float) -> float:
    if not np.isfinite(fps) or fps <= 0:
        raise BadInputError(Reason.BAD_FPS, f"{path} reports a frame rate of {fps}")
    return fps


# ---- decord --------------------------------------------------------------------------------------


def _open_video(path: str, **kwargs) -> decord.VideoReader:
    _check_file(path)
    try:
        # decord's default (fault_tol=-1) silently repeats an earlier frame in place of each frame it cannot
        # decode; a tolerance just above zero makes the first such frame raise instead, so it is reported.
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, fault_tol=CORRUPT_FRAME_TOLERANCE,
                                  **kwargs)
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:  # decord asserts on a 0-frame stream
        raise BadInputError(Reason.NOT_A_VIDEO, f"{path} has no decodable video stream ({exc})") from None


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


def _decord_times(vr: decord.VideoReader) -> np.ndarray:
    """decord's frame start times: pts less the stream's start time (measured: a video stream starting at
    1 s reads 0.0 for its first frame; frames an edit list hides read negative)."""
    n = len(vr)
    times = np.empty(n, np.float64)
    for s in range(0, n, 4096):  # reads the index only, no decoding
        times[s : s + 4096] = vr.get_frame_timestamp(list(range(s, min(n, s + 4096))))[:, 0]
    return times


# Decoded frames decord may hold ahead of the one asked for. After each read its decoding thread goes on to
# the end of the file, holding every frame (decord issues 208 and 197): a 10-minute 640x360 video grew to
# 6.7 GB and hit the isolated child's memory cap. A seek to frame 0 stops it and drops what it holds; the next
# read then decodes again from the keyframe before it (measured: 1.65x the decoding time of those chunks), so
# the seek is made only while the frames left would exceed this. It is made as soon as get_batch returns:
# while the batch is copied out (0.1 s for 256 frames of 640x360) decord's thread decodes on, and a later
# seek dropped that work (the three-face 720p clip's decoding: 6.2-6.4 s of CPU seeking first, 6.5-7.4 s
# seeking after the copy, 6.3-6.4 s never seeking).
READ_AHEAD_BYTES = 768 * 2**20


def _decord_chunks(path: str, width: int, height: int, chunk: int, start: int = 0,
                   stop: int | None = None) -> Iterator[np.ndarray]:
    vr = _open_video(path, width=width, height=height)
    resize = None
    if not _decoder_resize_works(vr):
        # decord 0.6.0 fails some output sizes (every width 48, for one); decode at native size instead
        # and resize here, which gives the same frames at a little more cost.
        vr = _open_video(path)
        resize = (width, height)
    n = len(vr) if stop is None else min(stop, len(vr))
    frame_bytes = None
    for first in range(start, n, chunk):  # decord seeks to the keyframe before ``start``: the same pixels
        idx = list(range(first, min(n, first + chunk)))
        try:
            batch = vr.get_batch(idx)  # a buffer of its own: a seek does not touch it
            frame_bytes = frame_bytes or int(np.prod(batch.shape[1:]))
            if (len(vr) - idx[-1] - 1) * frame_bytes > READ_AHEAD_BYTES:
                vr.seek(0)  # before the copy out, while decord's thread has decoded little beyond idx[-1]
            frames = batch.asnumpy()
        except decord.DECORDLimitReachedError as exc:
            raise BadInputError(Reason.CORRUPT_FRAMES, f"frames {idx[0]}-{idx[-1]} include corrupt frames that the "
                                f"decoder could only replace by earlier ones ({exc}); re-encode the file") from None
        except (decord.DECORDError, RuntimeError) as exc:
            raise BadInputError(Reason.DECODE_ERROR, f"frames {idx[0]}-{idx[-1]} could not be decoded "
                                f"({str(exc).splitlines()[0][:300]})") from None
        if resize is not None:
            frames = np.stack([cv2.resize(f, resize, interpolation=cv2.INTER_AREA) for f in frames])
        yield frames


def _decord_sample(path: str, indices: list[int], width: int, height: int) -> np.ndarray:
    vr = _open_video(path, width=width, height=height)
    if not _decoder_resize_works(vr):
        vr = _open_video(path)
        return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
                         for f in vr.get_batch(indices).asnumpy()])
    return vr.get_batch(indices).asnumpy()


# ---- PyAV ----------------------------------------------------------------------------------------


@overload
def _decode_tolerant(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]: ...
@overload
def _decode_tolerant(container: av.container.InputContainer, stream: av.AudioStream) -> Iterator[av.AudioFrame]: ...
def _decode_tolerant(container: av.container.InputContainer, stream: av.VideoStream | av.AudioStream
                     ) -> Iterator[av.VideoFrame | av.AudioFrame]:
    """The frames of ``stream`` as ``ffmpeg -i f -f null -`` decodes them (edit lists applied): a packet that
    fails to decode is skipped, and the data ending mid-packet (a file cut short) ends the stream."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)  # the last one is empty: decoding it flushes the decoder
        except StopIteration:
            return
        except av.error.FFmpegError:
            break
        try:
            yield from packet.decode()  # type: ignore[misc]  # PyAV's stubs: subtitles too, for a union of streams
        except av.error.FFmpegError:
            continue
    try:
        yield from stream.codec_context.decode(None)  # the frames the decoder still holds
    except av.error.FFmpegError:
        return


def _pyav_frames(path: str) -> Iterator[av.VideoFrame]:
    """Every frame FFmpeg displays, in order."""
    with av.open(path) as container:
        video = cast(av.VideoStream, _video_stream(container))  # probe() refused a file without one
        video.codec_context.thread_count = 1  # one core per video task, like decord's num_threads=1
        yield from _decode_tolerant(container, video)


@dataclass(frozen=True)
class _Frames:
    """The PyAV decoding pass at probe time: how many frames FFmpeg displays, and when."""

    times: np.ndarray  # s, container time
    width: int
    height: int


def _pyav_count(path: str, fps: float) -> _Frames:
    times: list[float] = []
    width = height = 0
    for frame in _pyav_frames(path):
        if not times:
            width, height = frame.width, frame.height
        t = frame.time
        times.append(t if t is not None else (times[-1] + 1.0 / (fps or 25.0) if times else 0.0))
    return _Frames(np.asarray(times, np.float64), width, height)


def _pyav_chunks(path: str, n: int, width: int, height: int, chunk: int, start: int = 0,
                 fast_scale: bool = False) -> Iterator[np.ndarray]:
    """Frames [start, n): decoded from the first frame (no seeking: MPEG-TS and the like have no index to seek
    by), the ones before ``start`` skipped without conversion. ``fast_scale``: from the YUV planes where
    workers/media/yuv_rgb.py converts the frame exactly."""
    buf: list[np.ndarray] = []
    done = start
    for i, frame in enumerate(_pyav_frames(path)):
        if i < start:
            continue
        buf.append(frame_rgb(frame, width, height) if fast_scale else
                   frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA"))
        if len(buf) == chunk or done + len(buf) == n:
            yield np.stack(buf)
            done += len(buf)
            buf = []
        if done == n:
            return
    raise BadInputError(Reason.DECODE_ERROR,
                        f"{path} ended after {done + len(buf)} frames this time, short of the {n} it had at probe; "
                        "the file may be changing or damaged: re-encode it")


def _first_frame(path: str) -> av.VideoFrame | None:
    try:
        for frame in _pyav_frames(path):
            return frame
    except av.error.FFmpegError:
        pass
    return None


def _planar_chunks(path: str, times: np.ndarray, width: int, height: int, chunk: int, start: int = 0,
                   stop: int | None = None) -> Iterator[np.ndarray]:
    """Frames [start, stop) of an indexed file decord can read (``times``: each frame's presentation time in
    the container), decoded by PyAV from the keyframe before ``start`` and scaled from their YUV planes
    (workers/media/yuv_rgb.py). Each frame is placed by its timestamp: one the decoder had to drop (a
    damaged packet) fails the video, as decord fails it, rather than shift the frames after it."""
    n = len(times) if stop is None else min(stop, len(times))
    gaps = np.diff(times)
    tol = 0.3 * float(gaps[gaps > 0].min()) if (gaps > 0).any() else 1e-3  # decord's times are float32
    buf = np.empty((0, height, width, 3), np.uint8)
    i = start
    for seek in ([True, False] if start > 0 else [False]):
        with av.open(path) as container:
            video = cast(av.VideoStream, _video_stream(container))
            video.codec_context.thread_count = 1  # one core per video task
            if seek and video.time_base:
                # To the keyframe at or before frame ``start``: the pixels of decoding from the first.
                container.seek(int(np.floor((times[start] - tol) / float(video.time_base))), stream=video,
                               backward=True)
            for frame in _decode_tolerant(container, video):
                if i == n:
                    return
                t = -np.inf if frame.time is None else frame.time
                if i == start and t < times[i] - tol:
                    continue  # before ``start``: decoded only as the reference for what follows
                if abs(t - times[i]) > tol:
                    if i == start and seek:
                        break  # the seek landed past ``start``: decode from the first frame instead
                    raise BadInputError(Reason.DECODE_ERROR, f"frame {i} (at {times[i]:.3f} s) could not be "
                                        "decoded (damaged data); re-encode the file")
                k = (i - start) % chunk
                if k == 0:  # written in place: no per-frame arrays to stack (a chunk of 720p is 177 MB)
                    buf = np.empty((min(chunk, n - i), height, width, 3), np.uint8)
                frame_rgb(frame, width, height, out=buf[k])
                i += 1
                if k + 1 == len(buf):
                    yield buf
            else:
                break  # the stream ended
    if i < n:
        raise BadInputError(Reason.DECODE_ERROR, f"{path} ended after {i} of its {n} frames this time; the file "
                            "may be changing or damaged: re-encode it")


# ---- the decoder the pipeline uses ---------------------------------------------------------------


@dataclass(frozen=True)
class _Probed:
    info: VideoInfo
    backend: Literal["decord", "pyav"]
    times: np.ndarray  # s from the first frame's presentation
    zero_s: float  # the first frame's presentation time in the container: where audio time 0 is
    # PyAV's time for the first frame of a decord file whose frames workers/media/yuv_rgb.py can convert
    # (None: not such a file): frames read with ``fast_scale`` are decoded by PyAV and placed by it.
    planar_zero_s: float | None = None


class VideoDecoder:
    """decord or PyAV per file, chosen at probe (see the module docstring); one instance per video task."""

    def __init__(self) -> None:
        self._probed: dict[str, _Probed] = {}

    def probe(self, path: str) -> VideoInfo:
        _check_file(path)
        c = _inspect(path)
        probed = self._probe_decord(path, c) or self._probe_pyav(path, c)
        self._probed[path] = probed
        return probed.info

    def _probe_decord(self, path: str, c: _Container) -> _Probed | None:
        """decord's view of the file, when it agrees with FFmpeg's frame count; None hands the file to PyAV."""
        if c.format not in DECORD_FORMATS or c.hidden or c.short:
            return None
        try:
            vr = _open_video(path)
            if len(vr) != c.packets or len(vr) == 0:
                return None
            h, w = vr[0].shape[:2]
            times = _decord_times(vr)
            fps = float(vr.get_avg_fps())
        except (BadInputError, decord.DECORDError, RuntimeError, AssertionError):
            return None
        if not np.isfinite(fps) or fps <= 0:
            return None  # PyAV may know better (FFmpeg's guess from the timestamps)
        info = VideoInfo(n_frames=len(vr), fps=fps, width=int(w), height=int(h),
                         has_audio=c.has_audio, frames_expected=c.expected)
        first = _first_frame(path)
        planar_zero = None
        if (first is not None and first.time is not None and (first.width, first.height) == (w, h)
                and convertible(first, first.width, first.height)):  # decord's size: no turn to apply
            planar_zero = float(first.time)
        return _Probed(info, "decord", times - times[0], c.start_s + float(times[0]), planar_zero)

    def _probe_pyav(self, path: str, c: _Container) -> _Probed:
        frames = _pyav_count(path, c.fps)
        n = len(frames.times)
        if n == 0:
            if c.short:
                raise BadInputError(Reason.TRUNCATED, f"{path} was cut short before its first whole frame "
                                    f"({c.expected or 'some'} frames declared, none decodable); "
                                    "copy or download it again")
            raise BadInputError(Reason.DECODE_ERROR, f"no frame of {path} could be decoded ({c.codec}); "
                                "re-encode the file")
        span = float(frames.times[-1] - frames.times[0])
        fps = c.fps or ((n - 1) / span if span > 0 else 0.0)  # without a rate, from the timestamps
        info = VideoInfo(n_frames=n, fps=_check_fps(path, fps), width=frames.width, height=frames.height,
                         has_audio=c.has_audio, frames_expected=c.expected)
        zero = float(frames.times[0])
        return _Probed(info, "pyav", frames.times - zero, zero)

    def backend(self, path: str) -> str:
        """Which decoder reads ``path``: "decord" or "pyav"."""
        return self._get(path).backend

    def _get(self, path: str) -> _Probed:
        if path not in self._probed:
            self.probe(path)
        return self._probed[path]

    def iter_frames(self, path: str, width: int, height: int, chunk: int, start: int = 0,
                    stop: int | None = None, fast_scale: bool = False) -> Iterator[np.ndarray]:
        p = self._get(path)
        stop = p.info.n_frames if stop is None else min(stop, p.info.n_frames)
        if (fast_scale and p.planar_zero_s is not None and width % 2 == 0 and height % 2 == 0
                and width <= p.info.width and height <= p.info.height):
            return read_ahead(_planar_chunks(path, p.planar_zero_s + p.times, width, height, chunk, start, stop),
                              "pyav-planar")
        if p.backend == "decord":
            return read_ahead(_decord_chunks(path, width, height, chunk, start, stop), "decord")
        return read_ahead(_pyav_chunks(path, stop, width, height, chunk, start, fast_scale), "pyav")

    def read_frames(self, path: str, indices: list[int], width: int, height: int) -> np.ndarray:
        p = self._get(path)
        if p.backend == "decord":
            return _decord_sample(path, indices, width, height)
        want = set(indices)
        got: dict[int, np.ndarray] = {}
        for i, frame in enumerate(_pyav_frames(path)):
            if i in want:
                got[i] = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
            if len(got) == len(want):
                break
        return np.stack([got[i] for i in indices])

    def frame_times(self, path: str) -> np.ndarray:
        return self._get(path).times

    def read_audio(self, path: str, sample_rate: int) -> AudioStream | None:
        # Not decord's AudioReader: it decodes the whole track at the source rate before resampling
        # (+660 MB peak for a 10-minute 48 kHz stereo track). PyAV's decoder + libswresample stream it.
        zero = self._get(path).zero_s
        try:
            container = av.open(path)
        except av.error.FFmpegError as exc:
            raise BadInputError(Reason.AUDIO_DECODE_ERROR, f"audio of {path} could not be read ({exc})") from None
        if _audio_stream(container) is None:
            container.close()
            return None
        return AudioStream(container, sample_rate, zero)


# The name configurations (and deployments registered with them) used before the choice per file.
DecordDecoder = VideoDecoder


class AudioStream:
    """Mono float32 samples at ``sample_rate`` on the video's timeline, decoded forward on demand.

    Sample k is at time k / sample_rate from ``zero_s`` (the first video frame's presentation time in the
    container). Each decoded audio frame goes where its presentation time says: a track that starts late
    reads as silence until it starts, a gap in the track (a damaged or missing packet) is filled with
    silence instead of pulling later sound early, and sound before zero is dropped. Samples before the last
    ``release`` are dropped, so memory stays bounded for any length (reads must move forward).
    """

    GAP_S = 0.01  # a jump in presentation time bigger than this is a gap, not timestamp rounding

    def __init__(self, container: av.container.InputContainer, sample_rate: int, zero_s: float = 0.0):
        self._container = container
        # read_audio() gives no AudioStream for a file without an audio track.
        self._frames = _decode_tolerant(container, cast(av.AudioStream, _audio_stream(container)))
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self._rate = sample_rate
        self._zero_s = zero_s
        self._buf = np.zeros(0, np.float32)
        self._origin: int | None = None  # timeline index of _buf[0], known once the first frame is decoded
        self._released = 0  # reads before this timeline index are refused
        self._next_s: float | None = None  # presentation time the next decoded sample should have
        self._gap = 0  # samples of silence (at the source rate) still to insert before ``_held``
        self._held: av.AudioFrame | None = None
        self._done = False

    def _next_input(self) -> av.AudioFrame | None:
        """The next frame for the resampler: pending silence, the frame it delays, or a decoded frame."""
        frame: av.AudioFrame | None
        if self._gap:
            held = cast(av.AudioFrame, self._held)  # set together with _gap
            piece = min(self._gap, held.sample_rate)  # at most 1 s at a time: memory stays bounded
            self._gap -= piece
            return _silence(held, piece)
        if self._held is not None:
            frame, self._held = self._held, None
            return frame
        frame = next(self._frames, None)
        if frame is None:
            return None
        t = frame.time
        if self._origin is None:
            self._origin = int(round(((t if t is not None else self._zero_s) - self._zero_s) * self._rate))
        elif t is not None and self._next_s is not None and t - self._next_s > self.GAP_S:
            self._gap, self._held = int(round((t - self._next_s) * frame.sample_rate)), frame
            self._next_s = t + frame.samples / frame.sample_rate
            return self._next_input()
        self._next_s = (t if t is not None else self._next_s or 0.0) + frame.samples / frame.sample_rate
        return frame

    def _end(self) -> int:
        return (self._origin or 0) + len(self._buf)

    def _decode_until(self, end: int) -> None:
        parts = [self._buf]
        pending = 0  # samples decoded in this call, not yet in _buf
        while not self._done and (self._origin is None or self._end() + pending < end):
            frame = self._next_input()  # the first one sets _origin
            if frame is None:
                out = self._resampler.resample(None)
                self._done = True
                self._container.close()
                if self._origin is None:  # a track without a single frame
                    self._origin = 0
            else:
                out = self._resampler.resample(frame)
            # Provably set: _next_input() sets it with the first frame, and a track without one got 0 above.
            assert self._origin is not None
            for r in out:
                a = r.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                if len(parts) == 1 and not len(self._buf) and self._origin + len(a) <= max(0, self._released):
                    self._origin += len(a)  # sound before zero (or released): dropped now, not held to the end
                    continue
                parts.append(a)
                pending += len(a)
        if len(parts) > 1:
            self._buf = np.concatenate(parts)
        self._drop_before(self._released)

    def _drop_before(self, t: int) -> None:
        """Drops buffered samples before timeline index ``t`` (and always those before 0)."""
        if self._origin is None:
            return
        drop = min(max(0, max(t, 0) - self._origin), len(self._buf))
        if drop:
            self._buf = self._buf[drop:].copy()
            self._origin += drop

    def get(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) of the timeline, zeros where the track has none (before it starts or before 0,
        past its end)."""
        if max(lo, 0) < self._released:
            raise ValueError(f"audio sample {lo} was already released (stream is at {self._released})")
        self._decode_until(hi)
        out = np.zeros(hi - lo, np.float32)
        if self._origin is not None:
            a, b = max(lo, self._origin), min(hi, self._end())
            if b > a:
                out[a - lo : b - lo] = self._buf[a - self._origin : b - self._origin]
        return out

    def release(self, before: int) -> None:
        self._released = max(self._released, before)
        self._drop_before(self._released)

    def skip_to(self, before: int, tick: Callable[[], None], step_s: float = 30.0) -> None:
        """``release(before)``, and decode the track up to there now, dropping it as it goes, calling ``tick``
        after each ``step_s`` seconds of sound: a later segment of a long video (workers/task/segments.py) decodes
        its sound from the start (no seeking: the decoder's and resampler's state must be the whole pass's),
        an hour of it in one silent call otherwise, which the isolation watchdog takes for a hang."""
        self.release(before)
        step = max(1, int(step_s * self._rate))
        while not self._done and (self._origin is None or self._end() < before):
            self._decode_until(min(before, self._end() + step) if self._origin is not None else 1)
            tick()

    def read_all(self) -> np.ndarray:
        """The track from the first unreleased timeline sample (0 unless released) to its end: silence
        first where it starts late."""
        self._decode_until(1 << 62)
        return self.get(self._released, self._end()) if self._end() > self._released else np.zeros(0, np.float32)


def _silence(like: av.AudioFrame, samples: int) -> av.AudioFrame:
    """``samples`` of silence in ``like``'s format, layout and rate."""
    frame = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=samples)
    frame.sample_rate = like.sample_rate
    fill = b"\x80" if like.format.name.startswith("u8") else b"\x00"  # unsigned 8-bit silence is mid-scale
    for plane in frame.planes:
        plane.update(fill * plane.buffer_size)
    return frame
