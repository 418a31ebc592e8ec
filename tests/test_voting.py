import numpy as np
import pytest

from workers.contract import NUM_CLASSES
from workers.voting import WindowAccumulator, decide, label_flips, smooth
from workers.windows import iter_windows, window_starts


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
    acc = WindowAccumulator(6, n_classes=2)
    acc.add(0, np.array([[1, 0], [1, 0], [1, 0], [1, 0]], np.float32), 4)
    acc.add(2, np.array([[0, 1], [0, 1], [0, 1], [0, 1]], np.float32), 4)
    m = acc.mean()
    np.testing.assert_allclose(m[:, 0], [1, 1, 0.5, 0.5, 0, 0])
    short = WindowAccumulator(2, n_classes=2)
    short.add(0, np.array([[0.2, 0.8], [0.6, 0.4], [9, 9], [9, 9]], np.float32), 2)  # rows 2-3 are padding
    np.testing.assert_allclose(short.mean(), [[0.2, 0.8], [0.6, 0.4]])


def test_accumulator_refuses_frames_without_prediction():
    acc = WindowAccumulator(5, n_classes=2)
    acc.add(0, np.ones((4, 2), np.float32), 4)
    with pytest.raises(RuntimeError, match="1 frames got no prediction"):
        acc.mean()


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


def test_iter_windows_matches_slicing_across_chunk_boundaries():
    from dataclasses import replace

    from workers.contract import PREPROCESSING
    from workers.preprocess import InputChunk

    p = replace(PREPROCESSING, window=8, stride=3)
    n = 29
    face = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    mel = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    fm, am = np.ones(n, bool), np.arange(n) % 2 == 0
    chunks = [InputChunk(s, face[s:s + 5], fm[s:s + 5], mel[s:s + 5], am[s:s + 5], fm[s:s + 5].astype(np.int16))
              for s in range(0, n, 5)]
    wins = list(iter_windows(chunks, n, p))
    assert [w.start for w in wins] == window_starts(n, 8, 3)
    for w in wins:
        np.testing.assert_array_equal(w.inputs["mel"][:, 0, 0], np.arange(w.start, w.start + 8))
        np.testing.assert_array_equal(w.inputs["audio_mask"], am[w.start:w.start + 8])
    one = list(iter_windows([InputChunk(0, face[:3], fm[:3], mel[:3], am[:3], fm[:3].astype(np.int16))], 3, p))
    assert len(one) == 1 and one[0].length == 3
    assert not one[0].inputs["face_mask"][3:].any() and not one[0].inputs["audio_mask"][3:].any()


def test_iter_windows_detects_a_short_decode():
    from dataclasses import replace

    from workers.contract import PREPROCESSING
    from workers.preprocess import InputChunk

    p = replace(PREPROCESSING, window=4, stride=2)
    z = np.zeros(6, bool)
    chunk = InputChunk(0, np.zeros((6, 2, 2, 3), np.uint8), z, np.zeros((6, 2, 2), np.float32), z, z.astype(np.int16))
    with pytest.raises(RuntimeError, match="decoder yielded 6 frames but the video reported 10"):
        list(iter_windows([chunk], 10, p))
