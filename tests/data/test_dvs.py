"""Event datasets on tiny trees in the official layouts: samples, labels, frames vs SpikingJelly's pipeline, the
frame cache (atomic, keyed, rebuilt when damaged or interrupted), the CIFAR10-DVS split file, clear errors."""

import json

import numpy as np
import pytest
import torch

import spikeformer.data.cache as cache_mod
from spikeformer.data.cache import FrameCache, stray_temp_files
from spikeformer.data.registry import build_dataset
from spikeformer.errors import SpikeformerError

from test_writers import random_stream, write_aedat2, write_aedat3, write_atis

sj_utils = pytest.importorskip("spikingjelly.datasets.utils")
KW = dict(workers=1, progress=False, augment=False)


def _gesture_tree(root, rng):
    d = root / "DvsGesture"
    d.mkdir(parents=True)
    (d / "trials_to_train.txt").write_text("user01_fluorescent.aedat\n\n")
    (d / "trials_to_test.txt").write_text("user24_led.aedat\n")
    for name, windows in (("user01_fluorescent", [(1, 0, 1000), (11, 1000, 2500), (1, 2500, 4000)]),
                          ("user24_led", [(3, 500, 3000)])):
        t, x, y, p = random_stream(rng, 400, 128, 128, t_max=4000)
        write_aedat3(d / f"{name}.aedat", [(1, 0, list(zip(t[:250], x[:250], y[:250], p[:250]))),
                                           (1, 0, list(zip(t[250:], x[250:], y[250:], p[250:])))])
        (d / f"{name}_labels.csv").write_text(
            "class,startTime_usec,endTime_usec\n" + "".join(f"{c},{s},{e}\n" for c, s, e in windows))
    return d


def test_dvs128_gesture(tmp_path):
    d = _gesture_tree(tmp_path, np.random.default_rng(0))
    train = build_dataset("dvs128-gesture", "train", root=str(tmp_path), T=4, **KW)
    test = build_dataset("dvs128-gesture", "test", root=str(tmp_path), T=4, **KW)
    assert len(train) == 3 and len(test) == 1
    # SpikingJelly's ImageFolder order: folders '0','1','10','2',... -> class 11 (folder '10') is label 2
    assert [s.label for s in train.samples] == [0, 2, 0] and test.samples[0].label == 3
    assert [s.sample_id for s in train.samples] == ["train/0/user01_fluorescent_0", "train/10/user01_fluorescent_0",
                                                    "train/0/user01_fluorescent_1"]
    # frames equal SpikingJelly's own pipeline: load_aedat_v3, window mask, fixed-number integration
    ev = sj_utils.load_aedat_v3(str(d / "user01_fluorescent.aedat"))
    m = (ev["t"] >= 1000) & (ev["t"] < 2500)
    ref = sj_utils.integrate_events_by_fixed_frames_number({k: v[m] for k, v in ev.items()}, "number", 4, 128, 128)
    x, label = train[1]
    assert x.dtype == torch.float32 and x.shape == (4, 2, 128, 128) and label == 2
    np.testing.assert_array_equal(x.numpy(), ref)
    assert x.sum() == m.sum()
    cache_dir = tmp_path / "spikeformer_cache" / "dvs128-gesture" / "frames_T4_number_128x128"
    assert sorted(p.relative_to(cache_dir).as_posix() for p in cache_dir.rglob("*.npz")) == [
        "test/2/user24_led_0.npz", "train/0/user01_fluorescent_0.npz", "train/0/user01_fluorescent_1.npz",
        "train/10/user01_fluorescent_0.npz"]


def _cifar10dvs_tree(root, rng, per_class=11):
    from spikeformer.data.dvs import CIFAR10DVS_CLASSES

    for c in CIFAR10DVS_CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            write_aedat2(root / c / f"cifar10_{c}_{i}.aedat", *random_stream(rng, 60, 128, 128))


def test_cifar10_dvs_split_file_and_frames(tmp_path):
    _cifar10dvs_tree(tmp_path, np.random.default_rng(1))
    train = build_dataset("cifar10-dvs", "train", root=str(tmp_path), T=3, split_by="time", **KW)
    test = build_dataset("cifar10-dvs", "test", root=str(tmp_path), T=3, split_by="time", **KW)
    # per class ceil(0.9 * 11) = 10 train, 1 test; order = file names sorted as strings (0, 1, 10, 2, ..., 9)
    assert len(train) == 100 and len(test) == 10
    assert [s.sample_id for s in test.samples[:2]] == ["airplane/cifar10_airplane_9", "automobile/cifar10_automobile_9"]
    assert "airplane/cifar10_airplane_10" in {s.sample_id for s in train.samples}
    assert sorted(set(train.targets)) == list(range(10)) and test.targets == list(range(10))
    split_file = tmp_path / "spikeformer_cache" / "cifar10-dvs" / "split_90_10.json"
    split = json.loads(split_file.read_text())
    assert len(split["train"]) == 100 and split["test"][0] == "airplane/cifar10_airplane_9.aedat"
    # frames: our reader + integration equal SpikingJelly's CIFAR10-DVS reader + integration
    from spikingjelly.datasets.cifar10_dvs import _load_origin_data

    ev = _load_origin_data(str(tmp_path / "airplane" / "cifar10_airplane_9.aedat"))
    ref = sj_utils.integrate_events_by_fixed_frames_number(ev, "time", 3, 128, 128)
    np.testing.assert_array_equal(test[0][0].numpy(), ref)
    # the stored split is reused, and refused when the files no longer match it
    (tmp_path / "airplane" / "cifar10_airplane_3.aedat").unlink()
    with pytest.raises(SpikeformerError, match="split_90_10.json"):
        build_dataset("cifar10-dvs", "test", root=str(tmp_path), T=3, **KW)


def test_n_mnist_and_n_caltech101(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("Train", "Test"):
        for digit in ("0", "1"):
            (tmp_path / "nm" / split / digit).mkdir(parents=True)
            for i in range(2):
                write_atis(tmp_path / "nm" / split / digit / f"{i:05d}.bin", *random_stream(rng, 50, 34, 34))
    ds = build_dataset("n-mnist", "test", root=str(tmp_path / "nm"), T=5, **KW)
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1] and ds.classes == ["0", "1"]
    f = tmp_path / "nm" / "Test" / "1" / "00001.bin"
    ref = sj_utils.integrate_events_by_fixed_frames_number(sj_utils.load_ATIS_bin(str(f)), "number", 5, 34, 34)
    np.testing.assert_array_equal(ds[3][0].numpy(), ref)

    for c in ("BACKGROUND_Google", "accordion", "airplanes"):
        (tmp_path / "nc" / "Caltech101" / c).mkdir(parents=True)
        for i in range(1, 4):
            write_atis(tmp_path / "nc" / "Caltech101" / c / f"image_{i:04d}.bin", *random_stream(rng, 80, 180, 240))
    tr = build_dataset("n-caltech101", "train", root=str(tmp_path / "nc"), T=2, **KW)
    te = build_dataset("n-caltech101", "test", root=str(tmp_path / "nc"), T=2, **KW)
    assert (len(tr), len(te)) == (9, 0)  # ceil(0.9 * 3) = 3: classes this small have no test file
    assert tr.classes == ["BACKGROUND_Google", "accordion", "airplanes"] and tr[8][0].shape == (2, 2, 180, 240)


def test_cache_rebuilds_damaged_and_interrupted_entries(tmp_path, monkeypatch):
    _gesture_tree(tmp_path, np.random.default_rng(3))
    ds = build_dataset("dvs128-gesture", "train", root=str(tmp_path), T=4, **KW)
    good = ds[0][0].clone()
    path = ds.cache.path(ds.samples[0].sample_id)
    # a damaged entry (truncated file) is detected, deleted and rebuilt from the events
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert torch.equal(ds[0][0], good) and path.stat().st_size == len(data)
    # a write interrupted mid-way leaves no entry under the final name; the next build makes it
    path.unlink()

    def crash(f, **kw):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        ds.cache.save(ds.samples[0].sample_id, good.numpy())
    monkeypatch.undo()
    assert not path.exists() and not list(stray_temp_files(ds.cache.dir))
    (ds.cache.dir / "train" / "0" / ".stray.npz.123.tmp").write_bytes(b"junk")  # from a killed process
    assert ds.prepare(workers=1, progress=False) == 1 and path.exists()
    np.testing.assert_array_equal(FrameCache(ds.cache.dir.parent, 4, "number", (128, 128)).load(
        ds.samples[0].sample_id), good.numpy())
    # a new T (or split_by, or size) gets its own cache directory
    ds8 = build_dataset("dvs128-gesture", "train", root=str(tmp_path), T=8, split_by="time", **KW)
    assert ds8.cache.dir.name == "frames_T8_time_128x128" and ds8[0][0].shape == (8, 2, 128, 128)


def test_parallel_build_matches_serial(tmp_path):
    _gesture_tree(tmp_path, np.random.default_rng(4))
    a = build_dataset("dvs128-gesture", "train", root=str(tmp_path), T=4, cache_dir=str(tmp_path / "c1"), **KW)
    kw = dict(KW, workers=2)
    b = build_dataset("dvs128-gesture", "train", root=str(tmp_path), T=4, cache_dir=str(tmp_path / "c2"), **kw)
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0])


def test_bad_samples_raise_instead_of_becoming_zeros(tmp_path):
    d = _gesture_tree(tmp_path, np.random.default_rng(5))
    # a window with no events
    (d / "user24_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n3,90000,95000\n")
    with pytest.raises(SpikeformerError, match="user24_led.aedat.*no events"):
        build_dataset("dvs128-gesture", "test", root=str(tmp_path), T=4, **KW)
    # a recording truncated after its frames were cached: cached frames still load, a rebuild names the file
    ds = build_dataset("dvs128-gesture", "train", root=str(tmp_path), T=4, **KW)
    aedat = d / "user01_fluorescent.aedat"
    aedat.write_bytes(aedat.read_bytes()[:-3])
    assert ds[0][0].sum() > 0
    ds.cache.path(ds.samples[0].sample_id).unlink()
    with pytest.raises(SpikeformerError, match="user01_fluorescent.aedat: truncated"):
        ds[0]
    # an N-MNIST file whose events fall outside the 34x34 sensor (a file from another dataset)
    (tmp_path / "nm" / "Train" / "0").mkdir(parents=True)
    write_atis(tmp_path / "nm" / "Train" / "0" / "00001.bin", [1, 2], [100, 3], [5, 3], [1, 0])
    with pytest.raises(SpikeformerError, match="00001.bin: events fall outside the 34x34 sensor"):
        build_dataset("n-mnist", "train", root=str(tmp_path / "nm"), **KW)


def test_missing_directories_name_the_path(tmp_path):
    for name, expect in (("dvs128-gesture", "trials_to_train.txt"), ("cifar10-dvs", "class folder"),
                         ("n-mnist", "Train"), ("n-caltech101", "Caltech101")):
        (tmp_path / name).mkdir()
        with pytest.raises(SpikeformerError, match=expect) as e:
            build_dataset(name, "train", root=str(tmp_path / name), **KW)
        assert str(tmp_path / name) in str(e.value)
        with pytest.raises(SpikeformerError, match="not found"):
            build_dataset(name, "train", root=str(tmp_path / "nowhere"), **KW)
    (tmp_path / "g2").mkdir()
    (tmp_path / "g2" / "DvsGesture.tar.gz").write_bytes(b"")
    with pytest.raises(SpikeformerError, match="tar -xzf DvsGesture.tar.gz"):
        build_dataset("dvs128-gesture", "train", root=str(tmp_path / "g2"), **KW)
    with pytest.raises(SpikeformerError, match="data_root"):
        build_dataset("cifar10-dvs", "train")


def test_augment_and_resize_options(tmp_path):
    _gesture_tree(tmp_path, np.random.default_rng(6))
    torch.manual_seed(0)
    ds = build_dataset("dvs128-gesture", "train", root=str(tmp_path), T=2, workers=1, progress=False, resize=32)
    x, _ = ds[0]
    assert x.shape == (2, 2, 32, 32)
    plain = build_dataset("dvs128-gesture", "train", root=str(tmp_path), T=2, **KW)
    # 'area' resizing keeps the mean count (x 16 for 128 -> 32) up to the augmentation's roll/cutout
    assert plain[0][0].shape == (2, 2, 128, 128)
    assert x.sum() * 16 <= plain[0][0].sum() + 1e-3
