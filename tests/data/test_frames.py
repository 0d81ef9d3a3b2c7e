"""events_to_frames: hand-computed expectations and SpikingJelly 2.0's integration on the same events."""

import numpy as np
import pytest

from spikeformer.data.events import make_events
from spikeformer.data.frames import events_to_frames
from spikeformer.errors import SpikeformerError

from test_writers import random_stream

sj_utils = pytest.importorskip("spikingjelly.datasets.utils")


def test_number_split_by_hand():
    # 7 events into T=3 slices: 7 // 3 = 2 per slice, the last slice takes the remainder (3 events)
    ev = make_events(t=[0, 1, 2, 3, 4, 5, 6], x=[0, 1, 1, 2, 0, 0, 0], y=[0, 0, 0, 1, 1, 1, 1], p=[1, 0, 0, 1, 1, 1, 0])
    f = events_to_frames(ev, 3, "number", (2, 3))
    assert f.shape == (3, 2, 2, 3) and f.dtype == np.float32
    expected = np.zeros((3, 2, 2, 3), np.float32)
    expected[0, 1, 0, 0] = 1  # (x0, y0, ON)
    expected[0, 0, 0, 1] = 1  # (x1, y0, OFF)
    expected[1, 0, 0, 1] = 1
    expected[1, 1, 1, 2] = 1
    expected[2, 1, 1, 0] = 2  # counts, not binarised
    expected[2, 0, 1, 0] = 1
    np.testing.assert_array_equal(f, expected)


def test_time_split_by_hand():
    # t spans 0..100, T=4 -> dt = 25: [0,25) [25,50) [50,75) [75, end]; t=100 falls in the last slice
    ev = make_events(t=[0, 24, 25, 60, 99, 100], x=[0, 0, 1, 1, 2, 2], y=[0, 0, 0, 0, 0, 0], p=[1, 1, 0, 1, 0, 0])
    f = events_to_frames(ev, 4, "time", (1, 3))
    np.testing.assert_array_equal(f.sum(axis=(1, 2, 3)), [2, 1, 1, 2])
    assert f[0, 1, 0, 0] == 2 and f[1, 0, 0, 1] == 1 and f[2, 1, 0, 1] == 1 and f[3, 0, 0, 2] == 2


@pytest.mark.parametrize("split_by", ["number", "time"])
@pytest.mark.parametrize("n,T", [(1000, 16), (37, 4), (5000, 10), (16, 16)])
def test_matches_spikingjelly(split_by, n, T):
    rng = np.random.default_rng(n * T)
    H, W = 34, 40
    t, x, y, p = random_stream(rng, n, H, W, t_max=10**6)
    ours = events_to_frames(make_events(t, x, y, p), T, split_by, (H, W))
    try:
        ref = sj_utils.integrate_events_by_fixed_frames_number(dict(t=t, x=x, y=y, p=p), split_by, T, H, W)
    except IndexError:  # SpikingJelly fails when a time slice is empty; nothing to compare
        assert split_by == "time"
        return
    np.testing.assert_array_equal(ours, ref)
    assert ours.sum() == n


def test_errors_and_unsorted_time():
    ev = make_events(t=[5, 1, 3], x=[0, 1, 2], y=[0, 0, 0], p=[1, 1, 1])
    f = events_to_frames(ev, 2, "time", (1, 3))  # sorted by t first: t=1 (x1) | t=3, 5 (x2, x0)
    np.testing.assert_array_equal(f[:, 1, 0], [[0, 1, 0], [1, 0, 1]])
    with pytest.raises(SpikeformerError, match="outside the 1x2 sensor"):
        events_to_frames(ev, 2, "number", (1, 2))
    with pytest.raises(SpikeformerError, match="empty"):
        events_to_frames(ev[:0], 2)
    with pytest.raises(SpikeformerError, match="split_by"):
        events_to_frames(ev, 2, "count")
    with pytest.raises(SpikeformerError, match="positive"):
        events_to_frames(ev, 0)
    # SpikingJelly's dict form is accepted too
    d = dict(t=np.array([0, 1]), x=np.array([1, 1]), y=np.array([0, 0]), p=np.array([0, 1]))
    assert events_to_frames(d, 1).shape == (1, 2, 1, 2)
