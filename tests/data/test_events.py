"""Event readers: round trips through tiny files in each on-disk format, SpikingJelly 2.0's readers as oracle,
and one clear SpikeformerError naming the file for truncated, corrupt or wrongly formatted files."""


import numpy as np
import pytest

from spikeformer.data.events import (EVENT_DTYPE, detect_format, make_events, read_aedat2, read_events,
                                     read_gesture_labels, write_events)
from spikeformer.errors import SpikeformerError

from test_writers import random_stream, write_aedat2, write_aedat3, write_atis

sj_utils = pytest.importorskip("spikingjelly.datasets.utils")


def _assert_events(ev, t, x, y, p):
    assert ev.dtype == EVENT_DTYPE
    np.testing.assert_array_equal(ev["t"], t)
    np.testing.assert_array_equal(ev["x"], x)
    np.testing.assert_array_equal(ev["y"], y)
    np.testing.assert_array_equal(ev["p"], p)


def test_atis_round_trip_and_spikingjelly(tmp_path):
    rng = np.random.default_rng(0)
    t, x, y, p = random_stream(rng, 300, 34, 34, t_max=2**23 - 1)
    t[-1] = 2**23 - 1  # the largest 23-bit timestamp
    f = tmp_path / "00002.bin"
    write_atis(f, t, x, y, p)
    assert f.stat().st_size == 5 * 300
    ev = read_events(f)
    _assert_events(ev, t, x, y, p)
    ref = sj_utils.load_ATIS_bin(str(f))
    for k in "txyp":
        np.testing.assert_array_equal(ev[k], ref[k])


def test_atis_overflow_markers_dropped_and_shift_later_timestamps(tmp_path):
    f = tmp_path / "a.bin"
    write_atis(f, [10, 20, 30, 40], [1, 0, 2, 3], [1, 240, 2, 3], [1, 0, 0, 1])
    ev = read_events(f)
    _assert_events(ev, [10, 30 + 2**13, 40 + 2**13], [1, 2, 3], [1, 2, 3], [1, 0, 1])


def test_aedat3_round_trip_overflow_and_other_packets(tmp_path):
    rng = np.random.default_rng(1)
    t, x, y, p = random_stream(rng, 50, 128, 128, t_max=2**31 - 1)
    first, second = list(zip(t[:30], x[:30], y[:30], p[:30])), list(zip(t[30:], x[30:], y[30:], p[30:]))
    f = tmp_path / "user01_fluorescent.aedat"
    # a special-event packet (type 0) between the polarity packets must be skipped; the second polarity packet
    # carries tsOverflow = 1, which adds 2**31 us to its timestamps
    write_aedat3(f, [(1, 0, first), (0, 0, [(5, 0, 0, 0)] * 3), (1, 1, second)])
    assert detect_format(f) == "aedat3"
    ev = read_events(f)
    _assert_events(ev, np.concatenate([t[:30], t[30:] + 2**31]), x, y, p)
    ref = sj_utils.load_aedat_v3(str(f))
    for k in "txyp":
        np.testing.assert_array_equal(ev[k], ref[k])


def test_aedat2_cifar10dvs_axes_match_spikingjelly(tmp_path):
    sj_c10 = pytest.importorskip("spikingjelly.datasets.cifar10_dvs")
    rng = np.random.default_rng(2)
    t, x, y, p = random_stream(rng, 200, 128, 128)
    f = tmp_path / "cifar10_airplane_0.aedat"
    write_aedat2(f, t, x, y, p)
    assert detect_format(f) == "aedat2"
    ev = read_events(f)
    _assert_events(ev, t, 127 - y, 127 - x, 1 - p)  # SpikingJelly's transpose-and-flip and polarity swap
    _assert_events(read_aedat2(f, cifar10dvs_axes=False), t, x, y, p)
    ref = sj_c10._load_origin_data(str(f))
    for k in "txyp":
        np.testing.assert_array_equal(ev[k], ref[k])


def test_npz_and_npy_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    ev = make_events(*random_stream(rng, 40, 20, 30))
    write_events(tmp_path / "s.npz", ev)
    _assert_events(read_events(tmp_path / "s.npz"), ev["t"], ev["x"], ev["y"], ev["p"])
    np.save(tmp_path / "s.npy", ev)
    _assert_events(read_events(tmp_path / "s.npy"), ev["t"], ev["x"], ev["y"], ev["p"])
    # SpikingJelly's events_np files (separate arrays, its own dtypes) read the same
    np.savez_compressed(tmp_path / "sj.npz", t=ev["t"].astype(np.uint32), x=ev["x"].astype(np.int64),
                        y=ev["y"].astype(np.int64), p=ev["p"].astype(bool))
    _assert_events(read_events(tmp_path / "sj.npz"), ev["t"], ev["x"], ev["y"], ev["p"])


def _error(path):
    with pytest.raises(SpikeformerError) as e:
        read_events(path)
    assert str(path) in str(e.value)
    return str(e.value)


def test_truncated_and_corrupt_files_raise_naming_the_file(tmp_path):
    rng = np.random.default_rng(4)
    t, x, y, p = random_stream(rng, 20, 34, 34)
    write_atis(tmp_path / "a.bin", t, x, y, p)
    data = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(data[:-2])
    assert "truncated" in _error(tmp_path / "a.bin")

    write_aedat3(tmp_path / "g.aedat", [(1, 0, list(zip(t, x, y, p)))])
    data = (tmp_path / "g.aedat").read_bytes()
    (tmp_path / "g.aedat").write_bytes(data[:-5])
    assert "truncated" in _error(tmp_path / "g.aedat")
    (tmp_path / "g.aedat").write_bytes(data + b"\x01\x00\x01")  # stray bytes after the last packet
    assert "truncated" in _error(tmp_path / "g.aedat")
    (tmp_path / "h.aedat").write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n" + b"\x00" * 40)
    assert "END-HEADER" in _error(tmp_path / "h.aedat")

    write_aedat2(tmp_path / "c.aedat", t, x, y, p)
    data = (tmp_path / "c.aedat").read_bytes()
    (tmp_path / "c.aedat").write_bytes(data[:-4])
    assert "8-byte" in _error(tmp_path / "c.aedat")

    write_events(tmp_path / "e.npz", make_events(t, x, y, p))
    data = (tmp_path / "e.npz").read_bytes()
    (tmp_path / "e.npz").write_bytes(data[: len(data) // 2])
    assert "corrupt" in _error(tmp_path / "e.npz")


def test_wrong_format_and_missing_files(tmp_path):
    (tmp_path / "notes.bin").write_bytes(b"# experiment notes\n" + b"\x00" * 16)
    assert "wrong format" in _error(tmp_path / "notes.bin")
    (tmp_path / "x.aedat").write_bytes(b"\x00\x01" * 16)
    assert "not an AEDAT" in _error(tmp_path / "x.aedat")
    (tmp_path / "x.csv").write_text("1,2,3\n")
    assert "unrecognised" in _error(tmp_path / "x.csv")
    (tmp_path / "x.aedat4").write_bytes(b"#!AER-DAT4.0\r\n")
    assert "AEDAT 4" in _error(tmp_path / "x.aedat4")
    np.save(tmp_path / "plain.npy", np.zeros((3, 4)))
    assert "structured" in _error(tmp_path / "plain.npy")
    np.savez(tmp_path / "frames.npz", frames=np.zeros((2, 2)))
    assert "lacks" in _error(tmp_path / "frames.npz")
    assert "not found" in _error(tmp_path / "missing.bin")


def test_gesture_labels(tmp_path):
    f = tmp_path / "user01_fluorescent_labels.csv"
    f.write_text("class,startTime_usec,endTime_usec\n1,100,200\n11,300,450\n")
    np.testing.assert_array_equal(read_gesture_labels(f), [[1, 100, 200], [11, 300, 450]])
    f.write_text("class,startTime_usec,endTime_usec\n12,100,200\n")
    with pytest.raises(SpikeformerError, match="1..11"):
        read_gesture_labels(f)
    f.write_text("class,startTime_usec,endTime_usec\n1,abc,200\n")
    with pytest.raises(SpikeformerError, match="corrupt"):
        read_gesture_labels(f)
