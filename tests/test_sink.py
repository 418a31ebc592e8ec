"""Values as the writers put them in the Parquet files."""

from __future__ import annotations

import numpy as np

from emoframe.workers.output.sink import clean_seconds


def test_timestamps_carry_no_float_noise_nor_a_negative_zero():
    t = clean_seconds(np.array([-0.0, 0.1 + 0.2, 1 / 30, 7200 + 1 / 3]))
    assert t.tolist() == [0.0, 0.3, 0.033333, 7200.333333]
    assert not np.signbit(t[0])


def test_integer_microseconds_beside_the_seconds_are_exact_for_a_two_hour_video():
    """timestamp_us is the frame's time exactly (29.97 frames/s, 2 hours: float seconds print as 7199.992459,
    the integer needs no rounding to compare or join)."""
    from emoframe.workers.spec.contract import NUM_CLASSES
    from emoframe.workers.inference.labeling import Predictions
    from emoframe.workers.output.sink import frames_table

    n = 215_784  # 2 h at 30000/1001
    times = np.arange(n) * 1001 / 30000
    frame = np.arange(n, dtype=np.int32)
    probs = np.full((n, NUM_CLASSES), 1 / NUM_CLASSES, np.float32)
    pred = Predictions(frame, np.zeros(n, np.int32), np.ones(n, bool), np.ones((n, 4), np.float32),
                       np.ones(n, np.float32), np.zeros(n, bool), np.ones(n, bool), probs, np.zeros(n, np.int16),
                       probs.max(axis=1))
    table = frames_table("/a.mp4", 30000 / 1001, pred, "m", "r", times=times)
    us = table["timestamp_us"].to_numpy()
    assert us.dtype == np.int64 and us[1] == 33367 and us[-1] == round((n - 1) * 1001 / 30000 * 1e6)
    np.testing.assert_array_equal(us, np.round(table["timestamp_s"].to_numpy() * 1e6).astype(np.int64))
    assert (np.diff(us) > 0).all()
