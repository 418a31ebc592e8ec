"""The synthetic ABAW-layout set, checked with the real decoders the pipeline uses (decord)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch  # noqa: F401  -- torch before decord: the other order can crash at import

import decord  # noqa: E402

from emoframe.training.abaw_format import HEADER, read_annotation, write_annotation  # noqa: E402
from emoframe.training.synth import (  # noqa: E402
    CLASS_PROBS,
    FPS_CHOICES,
    SEGMENT_SECONDS,
    generate,
    load_manifest,
    sample_labels,
    sample_segments,
)
from emoframe.workers.spec.contract import CLASSES, NUM_CLASSES, PREPROCESSING  # noqa: E402

SEED = 0  # with the default no_audio_fraction, video 0 of seed 0 has no audio track and videos 1-2 have one
SHORT = dict(min_seconds=3.0, max_seconds=5.0)


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("synth")
    videos = generate(root, 3, SEED, **SHORT)
    assert {v.has_audio for v in videos} == {True, False}, "the fixture needs videos with and without audio"
    return root, videos


def _in_ranges(n: int, ranges) -> np.ndarray:
    mask = np.zeros(n, bool)
    for start, stop in ranges:
        mask[start:stop] = True
    return mask


def _near_edge(n: int, ranges, k: int) -> np.ndarray:
    """Frames within k frames of a range boundary (either side)."""
    edges = np.zeros(n, bool)
    for start, stop in ranges:
        for e in (start, stop):
            edges[max(0, e - k):e + k] = True
    return edges


def test_layout_frame_counts_and_fps(synth_set):
    root, videos = synth_set
    assert load_manifest(root) == videos
    assert json.loads((root / "manifest.json").read_text())[0]["id"] == f"synth_{SEED}_0000"
    for v in videos:
        assert re.fullmatch(rf"synth_{SEED}_\d{{4}}", v.id) and v.fps in FPS_CHOICES
        assert (root / v.annotation).read_text().splitlines()[0] == ",".join(CLASSES)
        labels = read_annotation(root / v.annotation)
        vr = decord.VideoReader(str(root / v.video))
        assert len(vr) == len(labels) == v.n_frames
        assert vr.get_avg_fps() == pytest.approx(v.fps)
        assert vr[0].shape == (96, 96, 3)
        assert labels.min() >= 0 and labels.max() < NUM_CLASSES


def test_audio_track_present_or_absent(synth_set):
    root, videos = synth_set
    for v in videos:
        path = str(root / v.video)
        if not v.has_audio:
            with pytest.raises(decord.DECORDError):
                decord.AudioReader(path, sample_rate=16000, mono=True)
            continue
        native = decord.AudioReader(path, sample_rate=v.sample_rate, mono=False)
        assert native.shape[0] == v.channels
        # AAC pads the last frame: the track matches the video duration to within one audio frame (1024 samples).
        assert abs(native.shape[1] - v.n_frames / v.fps * v.sample_rate) <= 1024


def test_reproducible_by_seed_and_index(synth_set, tmp_path):
    root, videos = synth_set
    again = generate(tmp_path / "again", 4, SEED, **SHORT)  # one more video: the first three must not change
    assert again[:3] == videos
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())[:3] == json.loads(
        (root / "manifest.json").read_text())
    for v in videos:
        assert (tmp_path / "again" / v.annotation).read_bytes() == (root / v.annotation).read_bytes()
        assert (tmp_path / "again" / v.video).read_bytes() == (root / v.video).read_bytes()
    generate(tmp_path / "again", 2, SEED, **SHORT)  # regenerating smaller removes the videos no longer in the set
    assert sorted(p.name for p in (tmp_path / "again" / "annotations").iterdir()) == [f"{v.id}.txt" for v in videos[:2]]
    assert len(list((tmp_path / "again" / "videos").iterdir())) == 2
    other = generate(tmp_path / "other", 3, SEED + 1, **SHORT)
    assert [o.identity for o in other] != [v.identity for v in videos]
    for o, v in zip(other, videos):
        theirs = read_annotation(tmp_path / "other" / o.annotation)
        assert not np.array_equal(theirs, read_annotation(root / v.annotation))


def test_blank_frames_exactly_where_face_is_absent(synth_set):
    root, videos = synth_set
    size = PREPROCESSING.crop_size
    n_blank = 0
    for v in videos:
        frames = decord.VideoReader(str(root / v.video)).get_batch(list(range(v.n_frames))).asnumpy()
        crops = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
        std = crops.astype(np.float32).mean(axis=-1).reshape(v.n_frames, -1).std(axis=1)
        absent = _in_ranges(v.n_frames, v.face_absent)
        mismatch = (std < PREPROCESSING.blank_std) != absent
        assert not (mismatch & ~_near_edge(v.n_frames, v.face_absent, 1)).any(), (v.id, np.flatnonzero(mismatch))
        assert std[~absent & ~_near_edge(v.n_frames, v.face_absent, 1)].min() > 20  # faces are far from blank
        n_blank += int(absent.sum())
    assert n_blank > 0


def test_silence_exactly_where_manifest_says(synth_set):
    root, videos = synth_set
    sr, ctx = PREPROCESSING.sample_rate, PREPROCESSING.audio_context
    quiet, loud = [], []
    for v in (v for v in videos if v.has_audio):
        samples = decord.AudioReader(str(root / v.video), sample_rate=sr, mono=True)[:].asnumpy()[0]
        # The pipeline's audio context: ctx samples centred on each frame's mid-time.
        starts = np.round((np.arange(v.n_frames) + 0.5) / v.fps * sr).astype(int) - ctx // 2
        inside = (starts >= 0) & (starts + ctx <= min(len(samples), round(v.n_frames / v.fps * sr)))
        idx = np.flatnonzero(inside)
        windows = np.stack([samples[s:s + ctx] for s in starts[idx]]).astype(np.float64)
        dbfs = 10 * np.log10(np.mean(windows ** 2, axis=1) + 1e-20)
        # Window i spans frames (i+0.5)*fps +- ctx/2: judge only frames whose whole window is on one side.
        k = int(np.ceil(ctx / 2 / sr * v.fps)) + 1
        silent = _in_ranges(v.n_frames, v.silent)[idx]
        clear = ~_near_edge(v.n_frames, v.silent, k)[idx]
        quiet.append(dbfs[silent & clear])
        loud.append(dbfs[~silent & clear])
    quiet, loud = np.concatenate(quiet), np.concatenate(loud)
    assert len(quiet) > 0 and len(loud) > 0
    assert quiet.max() < PREPROCESSING.silence_dbfs
    assert loud.min() > -35.0


def test_label_sequences_follow_the_long_tail():
    rng = np.random.default_rng(123)
    counts, lengths = np.zeros(NUM_CLASSES), []
    for fps in FPS_CHOICES * 50:
        n = 30 * fps
        segments = sample_segments(rng, n, fps)
        assert segments[0][1] == 0 and segments[-1][2] == n
        assert all(a[2] == b[1] for a, b in zip(segments, segments[1:]))  # contiguous cover
        lengths += [(stop - start) / fps for _, start, stop in segments[:-1]]  # the last may be cut by the end
        for cls, start, stop in segments:
            counts[cls] += stop - start
    freq = counts / counts.sum()
    order = np.argsort(freq)
    assert CLASSES[order[-1]] == "Neutral"
    assert {CLASSES[i] for i in order[:2]} == {"Fear", "Disgust"}
    np.testing.assert_allclose(freq, CLASS_PROBS, atol=0.03)
    assert SEGMENT_SECONDS[0] <= min(lengths) and max(lengths) <= SEGMENT_SECONDS[1]
    labels = sample_labels(np.random.default_rng(5), 300, 15)
    assert labels.dtype == np.int64 and labels.shape == (300,)


def test_annotation_roundtrip_and_rejections(tmp_path):
    path = tmp_path / "a.txt"
    write_annotation(path, [0, 7, -1, 3])
    np.testing.assert_array_equal(read_annotation(path), [0, 7, -1, 3])
    assert read_annotation(path).dtype == np.int64
    path.write_text("Neutral,Anger,Happiness\n0\n1\n")
    with pytest.raises(ValueError, match="first line must be the class names"):
        read_annotation(path)
    path.write_text(f"{HEADER}\n0\n8\n")
    with pytest.raises(ValueError, match="line 3"):
        read_annotation(path)
    path.write_text(f"{HEADER}\n0\nhappy\n")
    with pytest.raises(ValueError, match="integer"):
        read_annotation(path)
    with pytest.raises(ValueError):
        write_annotation(path, [0, 9])
