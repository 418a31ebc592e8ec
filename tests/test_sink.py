"""Values as the writers put them in the Parquet files."""

from __future__ import annotations

import numpy as np

from workers.sink import clean_seconds


def test_timestamps_carry_no_float_noise_nor_a_negative_zero():
    t = clean_seconds(np.array([-0.0, 0.1 + 0.2, 1 / 30, 7200 + 1 / 3]))
    assert t.tolist() == [0.0, 0.3, 0.033333, 7200.333333]
    assert not np.signbit(t[0])
