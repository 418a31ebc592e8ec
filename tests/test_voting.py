import numpy as np
import pytest

from emoframe.workers.spec.contract import NUM_CLASSES
from emoframe.workers.inference.voting import WindowAccumulator, decide, label_flips, smooth
from emoframe.workers.inference.windows import iter_windows, window_starts


def onehot(labels, conf=0.9):
    p = np.full((len(labels), NUM_CLASSES), (1 - conf) / (NUM_CLASSES - 1), np.float32)
    p[np.arange(len(labels)), labels] = conf
    return p


def test_isolated_one_frame_flip_is_outvoted():
    labels = np.array([4] * 10 + [1] + [4] * 10)
    voted, _ = decide(smooth(onehot(labels), 5))
    assert (voted == 4).all()
    assert label_flips(labels) == 2 and label_flips(voted) == 0


def test_segment_longer_than_the_span_survives_with_its_edges():
    labels = np.array([0] * 20 + [6] * 9 + [0] * 20)
    voted, _ = decide(smooth(onehot(labels), 5))
    # A 9-frame segment under a 5-frame centred span keeps every frame: at each edge frame the span
    # holds 3 frames of the segment against 2 outside it.
    np.testing.assert_array_equal(voted, labels)


def test_smoothing_at_the_edges_uses_only_available_frames():
    p = onehot(np.array([2, 2, 5, 5, 5]))
    s = smooth(p, 5)
    np.testing.assert_allclose(s[0], p[:3].mean(0), rtol=1e-6)  # frames 0..2, not zero padding
    np.testing.assert_allclose(s[-1], p[2:].mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-6)


def test_one_frame_video_and_span_one_are_identity():
    p = onehot(np.array([3]))
    np.testing.assert_array_equal(smooth(p, 9), p)
    q = onehot(np.array([1, 2, 3]))
    np.testing.assert_array_equal(smooth(q, 1), q)


def test_accumulator_averages_overlapping_windows_and_ignores_padding():
    acc = WindowAccumulator(n_classes=2)
    acc.add(0, np.array([[1, 0], [1, 0], [1, 0], [1, 0]], np.float32), 4)
    acc.add(2, np.array([[0, 1], [0, 1], [0, 1], [0, 1]], np.float32), 4)
    m = acc.mean(6)
    np.testing.assert_allclose(m[:, 0], [1, 1, 0.5, 0.5, 0, 0])
    short = WindowAccumulator(n_classes=2)
    short.add(0, np.array([[0.2, 0.8], [0.6, 0.4], [9, 9], [9, 9]], np.float32), 2)  # rows 2-3 are padding
    np.testing.assert_allclose(short.mean(2), [[0.2, 0.8], [0.6, 0.4]])
    grown = WindowAccumulator(n_classes=2)  # a long segment: storage grows past its first allocation
    for start in range(0, 1000, 4):
        grown.add(start, np.tile([[0.25, 0.75]], (4, 1)).astype(np.float32), 4)
    np.testing.assert_allclose(grown.mean(1000), np.tile([[0.25, 0.75]], (1000, 1)))


def test_accumulator_refuses_frames_without_prediction():
    acc = WindowAccumulator(n_classes=2)
    acc.add(0, np.ones((4, 2), np.float32), 4)
    with pytest.raises(RuntimeError, match="1 frames got no prediction"):
        acc.mean(5)


@pytest.mark.parametrize("n,t,s,expected", [
    (0, 4, 2, []), (1, 4, 2, [0]), (4, 4, 2, [0]), (5, 4, 2, [0, 1]), (8, 4, 2, [0, 2, 4]), (9, 4, 2, [0, 2, 4, 5]),
    (10, 4, 4, [0, 4, 6]),
])
def test_window_starts_cover_every_frame(n, t, s, expected):
    starts = window_starts(n, t, s)
    assert starts == expected
    covered = np.zeros(n, bool)
    for st in starts:
        covered[st : st + t] = True
    assert covered.all()


def _chunk(start, mel, audio, frame, track, face, present=None):
    from emoframe.workers.media.preprocess import FaceRows, InputChunk

    m = len(frame)
    present = np.ones(m, bool) if present is None else present
    rows = FaceRows(np.asarray(frame, np.int32), np.asarray(track, np.int32), present,
                    np.zeros((m, 4), np.float32), np.zeros(m, np.float32), face)
    return InputChunk(start, mel, audio, rows)


def _one_track_chunks(face, fm, mel, am, size):
    n = len(fm)
    return [_chunk(s, mel[s:s + size], am[s:s + size], np.arange(min(size, n - s)), np.zeros(min(size, n - s)),
                   face[s:s + size], fm[s:s + size]) for s in range(0, n, size)]


def test_iter_windows_matches_slicing_across_chunk_boundaries():
    from dataclasses import replace

    from emoframe.workers.spec.contract import PREPROCESSING

    p = replace(PREPROCESSING, window=8)
    n = 29
    face = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    mel = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    fm, am = np.arange(n) % 3 != 0, np.arange(n) % 2 == 0
    segments = []
    wins = list(iter_windows(_one_track_chunks(face, fm, mel, am, 5), n, segments, 3, p))
    assert [w.start for w in wins] == window_starts(n, 8, 3)
    assert len(segments) == 1 and segments[0].track == 0 and len(segments[0]) == n  # masked faces stay in it
    for w in wins:
        np.testing.assert_array_equal(w.inputs["mel"][:, 0, 0], np.arange(w.start, w.start + 8))
        np.testing.assert_array_equal(w.inputs["face"][:, 0, 0, 0], np.arange(w.start, w.start + 8))
        np.testing.assert_array_equal(w.inputs["audio_mask"], am[w.start:w.start + 8])
        np.testing.assert_array_equal(w.inputs["face_mask"], fm[w.start:w.start + 8])
    one = list(iter_windows(_one_track_chunks(face[:3], fm[:3], mel[:3], am[:3], 5), 3, [], 3, p))
    assert len(one) == 1 and one[0].length == 3
    assert not one[0].inputs["face_mask"][3:].any() and not one[0].inputs["audio_mask"][3:].any()


def test_every_face_track_and_every_faceless_run_is_its_own_segment():
    """Frames 0-9: track 0 throughout, track 1 in frames 3-7; frames 10-13: no face; frames 14-19: track 2.
    Windows never mix two faces, and each face's window carries that face's crops with the frame's audio."""
    from dataclasses import replace

    from emoframe.workers.spec.contract import PREPROCESSING

    p = replace(PREPROCESSING, window=4)
    n = 20
    frame, track = [], []
    for f in range(n):
        here = [0] if f < 10 else ([] if f < 14 else [2])
        here += [1] if 3 <= f <= 7 else []
        frame += [f] * len(here)
        track += sorted(here)
    frame, track = np.array(frame), np.array(track)
    face = (track * 100 + frame).astype(np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    mel = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    am = np.ones(n, bool)
    chunks = []
    for s in range(0, n, 6):  # chunk boundaries cut through tracks
        sel = (frame >= s) & (frame < s + 6)
        chunks.append(_chunk(s, mel[s:s + 6], am[s:s + 6], frame[sel] - s, track[sel], face[sel]))
    segments = []
    wins = list(iter_windows(chunks, n, segments, 2, p))
    spans = [(sg.track, sg.first_frame, len(sg)) for sg in segments]
    assert sorted(spans) == [(-1, 10, 4), (0, 0, 10), (1, 3, 5), (2, 14, 6)]
    for w in wins:
        sg = segments[w.segment]
        frames = sg.first_frame + w.start + np.arange(w.length)
        np.testing.assert_array_equal(w.inputs["mel"][: w.length, 0, 0], frames)
        if sg.track >= 0:
            np.testing.assert_array_equal(w.inputs["face"][: w.length, 0, 0, 0], sg.track * 100 + frames)
            assert w.inputs["face_mask"][: w.length].all()
        else:
            assert not w.inputs["face_mask"].any()
    for sg in segments:  # every frame of every segment is covered by a window
        covered = np.zeros(len(sg), bool)
        for w in wins:
            if w.segment == sg.number:
                covered[w.start : w.start + w.length] = True
        assert covered.all(), sg


def test_iter_windows_detects_a_short_decode():
    from dataclasses import replace

    from emoframe.workers.spec.contract import PREPROCESSING

    p = replace(PREPROCESSING, window=4)
    z = np.zeros(6, bool)
    chunk = _chunk(0, np.zeros((6, 2, 2), np.float32), z, np.arange(6), np.zeros(6),
                   np.zeros((6, 2, 2, 3), np.uint8), z)
    with pytest.raises(RuntimeError, match="decoder yielded 6 frames but the video reported 10"):
        list(iter_windows([chunk], 10, [], 2, p))
