"""Every event-camera format ``read_events`` reads, from files written here in each real byte layout (jAER DAVIS
AEDAT 2.0 with APS and IMU records interleaved, AEDAT 1.0, SLAYER .bs2, Prophesee EVT 2.0 and DAT by their specs;
AEDAT 4 and EVT 3.0 by faery's own writer); empty and out-of-sensor recordings refused by the datasets; a default
model for every event dataset."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from spikeformer.data import events_to_frames, get_dataset_info, list_datasets
from spikeformer.data.events import detect_format, read_aedat2, read_events, sensor_size
from spikeformer.data.registry import build_dataset
from spikeformer.errors import SpikeformerError
from spikeformer.models import get_model_info, list_models

from test_writers import random_stream, write_aedat2, write_atis

JAER_HEADER = (b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address, int32 "
               b"timestamp (8 bytes total), repeated for each event\r\n# Timestamps tick is 1 us\r\n"
               b"# created Thu Dec 03 14:47:00 CET 2015\r\n")
KW = dict(workers=1, progress=False, augment=False)


def jaer_file(path, addr, t, header=JAER_HEADER, record=8) -> None:
    """jAER AEDAT: '#' header lines, then big-endian (address, int32 timestamp) records; the address is 32 bits
    in AEDAT 2.0 (``record=8``) and 16 bits in AEDAT 1.0 (``record=6``)."""
    rec = np.zeros(len(addr), dtype=[("a", f">u{record - 4}"), ("t", ">u4")])
    rec["a"], rec["t"] = addr, t
    path.write_bytes(header + rec.tobytes())


# jAER DavisChip: bit 31 = APS/IMU sample, y bits 22..30, x bits 12..21, polarity bit 11, bit 10 = special event.
def davis_dvs(x, y, p):
    return (np.asarray(y, np.uint32) << 22) | (np.asarray(x, np.uint32) << 12) | (np.asarray(p, np.uint32) << 11)


def davis_aps(x, y, adc, readcycle):
    return np.uint32(0x80000000) | davis_dvs(x, y, 0) | (np.uint32(readcycle) << 10) | np.asarray(adc, np.uint32)


def davis_imu(kind, value):
    return np.uint32(0x80000C00) | (np.asarray(kind, np.uint32) << 28) | (np.asarray(value, np.uint32) << 12)


def davis_recording(rng, n, H, W):
    """A DAVIS stream: n DVS events with APS reads, IMU samples and external-input events interleaved.
    Returns (address, timestamp, is_dvs, dvs x, dvs raw y, dvs p)."""
    t, x, y, p = random_stream(rng, n, H, W)
    x[0], y[0] = W - 1, H - 1  # the corner pixels pin the sensor extent
    x[1], y[1] = 0, 0
    kind = rng.integers(0, 10, n)  # 0-5 DVS, 6-7 APS, 8 IMU, 9 external input
    addr = davis_dvs(x, y, p)
    aps = kind >= 6
    addr[aps] = davis_aps(x[aps], y[aps], rng.integers(0, 1024, aps.sum()), rng.integers(0, 2, aps.sum()))
    imu = kind == 8
    addr[imu] = davis_imu(rng.integers(0, 7, imu.sum()), rng.integers(0, 1 << 16, imu.sum()))
    ext = kind == 9
    addr[ext] = davis_dvs(x[ext], y[ext], 0) | np.uint32(1 << 10)
    addr[0], addr[1] = davis_dvs(x[0], y[0], p[0]), davis_dvs(x[1], y[1], p[1])
    dvs = np.ones(n, bool)
    dvs[aps | imu | ext] = False
    dvs[:2] = True
    return addr, t, dvs, x[dvs], y[dvs], p[dvs]


# ----------------------------------------------------------------------------------------------- AEDAT 2.0 DAVIS
@pytest.mark.parametrize("chip,H,W", [("eu.seebetter.ini.chips.davis.DAVIS240C", 180, 240),
                                      ("eu.seebetter.ini.chips.davis.Davis346B", 260, 346),
                                      ("eu.seebetter.ini.chips.davis.Davis640", 480, 640)])
def test_davis_aedat2_keeps_dvs_events_of_the_named_sensor(tmp_path, chip, H, W):
    addr, t, dvs, x, y, p = davis_recording(np.random.default_rng(0), 3000, H, W)
    f = tmp_path / "rec.aedat"
    jaer_file(f, addr, t, JAER_HEADER + b"# HardwareInterface: DAVIS FX3 0002-INI\r\n# AEChip: " + chip.encode()
              + b"\r\n")
    ev = read_events(f)
    assert dvs.sum() < len(addr) and ev.size == dvs.sum()  # APS, IMU and external-input records skipped
    np.testing.assert_array_equal(ev["t"], t[dvs])
    np.testing.assert_array_equal(ev["x"], x)
    np.testing.assert_array_equal(ev["y"], H - 1 - y)  # jAER rows count from the bottom
    np.testing.assert_array_equal(ev["p"], p)
    assert sensor_size(f) == (H, W)
    frames = events_to_frames(ev, 4, "number", sensor_size(f))
    assert frames.shape == (4, 2, H, W) and frames.sum() == ev.size and frames[:, :, 0, W - 1].sum() == 1


def test_davis_without_chip_line_is_recognised_by_its_addresses(tmp_path):
    # what read as 128x128 garbage before: the DVS128 masks applied to DAVIS addresses
    addr, t, dvs, x, y, p = davis_recording(np.random.default_rng(1), 2000, 260, 346)
    f = tmp_path / "old.aedat"
    jaer_file(f, addr, t)
    ev = read_events(f)
    assert ev.size == dvs.sum() and sensor_size(f) == (260, 346)  # the smallest DAVIS sensor holding the events
    np.testing.assert_array_equal(ev["y"], 259 - y)
    np.testing.assert_array_equal(ev["x"], x)
    # a DAVIS240 recording without chip line lands on 240x180
    addr, t, dvs, x, y, p = davis_recording(np.random.default_rng(2), 2000, 180, 240)
    jaer_file(f, addr, t, JAER_HEADER + b"# HardwareInterface: DAVIS FX2\r\n")
    assert sensor_size(f) == (180, 240) and read_events(f).size == dvs.sum()


def test_davis_event_outside_the_named_sensor_is_an_error(tmp_path):
    f = tmp_path / "bad.aedat"
    jaer_file(f, davis_dvs([10, 300], [5, 5], [1, 0]), [1, 2], JAER_HEADER + b"# AEChip: DAVIS240C\r\n")
    with pytest.raises(SpikeformerError, match=r"bad\.aedat.*outside the 240x180 sensor"):
        read_events(f)


def test_dvs128_aedat2_decodes_as_before(tmp_path):
    """CIFAR10-DVS files (no chip line) and DVS128 files naming their chip: SpikingJelly's mapping, 128x128."""
    rng = np.random.default_rng(3)
    t, x, y, p = random_stream(rng, 500, 128, 128)
    plain, named = tmp_path / "cifar10_cat_1.aedat", tmp_path / "dvs128.aedat"
    write_aedat2(plain, t, x, y, p)
    jaer_file(named, (np.asarray(y) << 8) | (np.asarray(x) << 1) | np.asarray(p), t,
              JAER_HEADER + b"# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128\r\n")
    for f in (plain, named):
        ev = read_events(f)
        np.testing.assert_array_equal(ev["x"], 127 - y)
        np.testing.assert_array_equal(ev["y"], 127 - x)
        np.testing.assert_array_equal(ev["p"], 1 - p)
        assert sensor_size(f) == (128, 128)
    raw = read_aedat2(plain, cifar10dvs_axes=False)
    np.testing.assert_array_equal(raw["x"], x)
    np.testing.assert_array_equal(raw["y"], y)


# ----------------------------------------------------------------------------------------------------- AEDAT 1.0
def test_aedat1_six_byte_records(tmp_path):
    rng = np.random.default_rng(4)
    t, x, y, p = random_stream(rng, 301, 128, 128)  # 301 * 6 bytes: not a whole number of 8-byte records
    addr = (np.asarray(y) << 8) | (np.asarray(x) << 1) | np.asarray(p)
    v2, headerless, versioned, old = (tmp_path / n for n in ("v2.aedat", "v1.aedat", "v1v.aedat", "Tmpdiff128.dat"))
    jaer_file(v2, addr, t)
    jaer_file(headerless, addr, t, b"# This is a raw AE data file - do not edit\r\n", record=6)
    jaer_file(versioned, addr, t, b"#!AER-DAT1.0\r\n# created 2008\r\n", record=6)
    jaer_file(old, addr, t, b"# jAER 2007 recording\r\n", record=6)
    ref = read_events(v2)
    for f in (headerless, versioned, old):
        assert detect_format(f) == "aedat1" and sensor_size(f) == (128, 128)
        np.testing.assert_array_equal(read_events(f), ref)  # one DVS128 recording reads the same in 1.0 and 2.0
    np.testing.assert_array_equal(ref["t"], t)
    # 12 events = 72 bytes: whole 6- and 8-byte records alike; the timestamps tell which (the 1.0 ones rise)
    jaer_file(headerless, addr[:12], t[:12], b"# no version line\r\n", record=6)
    assert detect_format(headerless) == "aedat1" and read_events(headerless).size == 12
    jaer_file(headerless, addr[:12], t[:12], b"# no version line\r\n", record=8)
    assert detect_format(headerless) == "aedat2" and read_events(headerless).size == 12
    headerless.write_bytes(b"# no version line\r\n" + bytes(13))
    with pytest.raises(SpikeformerError, match="neither 6-byte"):
        read_events(headerless)


# -------------------------------------------------------------------------------------------------------- ATIS
def test_bs2_is_read_as_atis(tmp_path):
    rng = np.random.default_rng(5)
    t, x, y, p = random_stream(rng, 200, 34, 34)
    write_atis(tmp_path / "0.bs2", t, x, y, p)
    write_atis(tmp_path / "0.bin", t, x, y, p)
    assert detect_format(tmp_path / "0.bs2") == "atis" and sensor_size(tmp_path / "0.bs2") is None
    np.testing.assert_array_equal(read_events(tmp_path / "0.bs2"), read_events(tmp_path / "0.bin"))
    np.testing.assert_array_equal(read_events(tmp_path / "0.bs2")["x"], x)


# -------------------------------------------------------------------------------- empty and out-of-sensor files
def _n_mnist_tree(root, bad: dict):
    rng = np.random.default_rng(6)
    for split in ("Train", "Test"):
        for digit in "01":
            d = root / split / digit
            d.mkdir(parents=True)
            for i in range(2):
                write_atis(d / f"{i:05d}.bin", *random_stream(rng, 100, 34, 34))
    for rel, events in bad.items():
        write_atis(root / rel, *events)


def test_empty_recording_is_refused_naming_the_file(tmp_path):
    _n_mnist_tree(tmp_path, {"Test/1/00009.bin": ([], [], [], [])})
    assert read_events(tmp_path / "Test/1/00009.bin").size == 0  # reading it is fine; a dataset of it is not
    with pytest.raises(SpikeformerError, match=r"00009\.bin: the recording holds no events"):
        build_dataset("n-mnist", "test", root=str(tmp_path), T=4, **KW)
    # a DAVIS file holding only APS frames and IMU samples has no DVS event either
    f = tmp_path / "frames_only.aedat"
    jaer_file(f, np.concatenate([davis_aps([1, 2], [3, 4], [5, 6], 0), davis_imu([0, 1], [7, 8])]), [1, 2, 3, 4],
              JAER_HEADER + b"# AEChip: DAVIS240C\r\n")
    assert read_events(f).size == 0


def test_recording_outside_the_sensor_is_refused_naming_the_file(tmp_path):
    _n_mnist_tree(tmp_path, {"Test/0/00007.bin": ([1, 2, 3], [100, 120, 90], [50, 60, 70], [1, 0, 1])})
    with pytest.raises(SpikeformerError, match=r"00007\.bin: none of its 3 events falls inside the 34x34 sensor"):
        build_dataset("n-mnist", "test", root=str(tmp_path), T=4, **KW)


# --------------------------------------------------------------------------------- Prophesee, AEDAT 4 (faery)
def _evt2_words(t, x, y, p):
    """Prophesee EVT 2.0: little-endian 32-bit words, type in bits 31..28; CD_OFF 0x0 / CD_ON 0x1 carry timestamp
    bits 5..0 in 27..22, x in 21..11, y in 10..0; EVT_TIME_HIGH 0x8 carries timestamp bits 33..6 in 27..0."""
    words, high = [], -1
    for ti, xi, yi, pi in zip(t, x, y, p):
        ti = int(ti)
        if ti >> 6 != high:
            high = ti >> 6
            words.append((0x8 << 28) | high)
        words.append((int(pi) << 28) | ((ti & 63) << 22) | (int(xi) << 11) | int(yi))
    return np.asarray(words, "<u4").tobytes()


def _dat_records(t, x, y, p):
    """Prophesee DAT (CD, version 2): after the '%' header, event type 0x0C and size 8, then little-endian uint32
    timestamp and uint32 x (bits 0..13) | y (bits 14..27) | polarity (bits 28..31)."""
    rec = np.zeros(len(t), dtype=[("t", "<u4"), ("d", "<u4")])
    rec["t"] = t
    rec["d"] = np.asarray(x) | (np.asarray(y) << 14) | (np.asarray(p) << 28)
    return bytes([0x0C, 8]) + rec.tobytes()


def _check(ev, t, x, y, p):
    for k, v in (("t", t), ("x", x), ("y", y), ("p", p)):
        np.testing.assert_array_equal(ev[k], v)


def test_prophesee_evt2_and_dat_by_their_specs(tmp_path):
    pytest.importorskip("faery")
    t, x, y, p = random_stream(np.random.default_rng(7), 400, 720, 1280, t_max=3_000_000)
    (tmp_path / "rec.raw").write_bytes(b"% camera_integrator_name Prophesee\n% evt 2.0\n"
                                       b"% format EVT2;height=720;width=1280\n% end\n" + _evt2_words(t, x, y, p))
    (tmp_path / "rec.dat").write_bytes(b"% Data file containing CD events.\n% Version 2\n% Width 1280\n"
                                       b"% Height 720\n" + _dat_records(t, x, y, p))
    for name, fmt in (("rec.raw", "evt"), ("rec.dat", "dat")):
        f = tmp_path / name
        assert detect_format(f) == fmt and sensor_size(f) == (720, 1280)
        _check(read_events(f), t, x, y, p)


@pytest.mark.parametrize("name,version", [("rec.aedat4", None), ("rec3.raw", "evt3"), ("rec2.raw", "evt2"),
                                          ("rec.dat", "dat2")])
def test_faery_written_files_read_back(tmp_path, name, version):
    faery = pytest.importorskip("faery")
    t, x, y, p = random_stream(np.random.default_rng(8), 5000, 260, 346, t_max=2_000_000)
    ev = np.zeros(len(t), dtype=faery.EVENTS_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["on"] = t + 1_000_000, x, y, p.astype(bool)
    faery.file_encoder.events_to_file([ev], tmp_path / name, dimensions=(346, 260), version=version)
    assert sensor_size(tmp_path / name) == (260, 346)
    _check(read_events(tmp_path / name), t + 1_000_000, x, y, p)


def test_damaged_aedat4_names_the_file(tmp_path):
    pytest.importorskip("faery")
    f = tmp_path / "cut.aedat4"
    f.write_bytes(b"#!AER-DAT4.0\r\n" + bytes(40))
    with pytest.raises(SpikeformerError, match=r"cut\.aedat4: truncated or corrupt AEDAT 4"):
        read_events(f)


def test_missing_faery_names_the_file_and_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faery", None)  # as if the extra were not installed
    (tmp_path / "rec.aedat4").write_bytes(b"#!AER-DAT4.0\r\n" + bytes(40))
    (tmp_path / "rec.raw").write_bytes(b"% evt 3.0\n% end\n")
    for name in ("rec.aedat4", "rec.raw"):
        with pytest.raises(SpikeformerError, match=r"needs the optional package faery: pip install "
                                                   r"'spikeformer\[events\]'") as e:
            read_events(tmp_path / name)
        assert name in str(e.value)


# ------------------------------------------------------------------------------------------------ default models
def test_every_event_dataset_has_a_two_channel_default_model():
    for name in list_datasets():
        info = get_dataset_info(name)
        if info.kind == "events":
            assert info.default_model in list_models(), name
            assert get_model_info(info.default_model).input_size[0] == 2, name


def test_n_mnist_trains_with_its_default_model(tmp_path):
    from spikeformer.engine import build_config, train

    _n_mnist_tree(tmp_path / "nm", {})
    cfg = build_config(data="n-mnist", sets=[f"data_root={tmp_path / 'nm'}", "T=2", "batch_size=2", "max_steps=1",
                                             "epochs=1", "report=false", f"out={tmp_path / 'run'}",
                                             "data_kwargs.workers=1", "data_kwargs.progress=false"])
    out = train(cfg, progress=False)
    assert out["model"] == "spikformer_dvs_2_256" and np.isfinite(out["loss"])
