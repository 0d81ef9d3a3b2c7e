"""``events-folder``: a user's recordings in class folders, in any event format: classes, the seeded stratified
split or split files, the sensor size (named by the files, their extent, or given), the frame cache; the embedded
events-digits written out as AEDAT 2.0 files give the very same frames and the very same training run."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import spikeformer.data.events_folder as events_folder
from spikeformer.data import get_dataset_info
from spikeformer.data.emulated import EventDigits
from spikeformer.data.events import make_events, write_events
from spikeformer.data.registry import build_dataset
from spikeformer.engine import build_config, train
from spikeformer.errors import SpikeformerError

from test_writers import random_stream, write_aedat2, write_atis
from test_event_formats import JAER_HEADER, davis_recording, jaer_file

KW = dict(workers=1, progress=False, augment=False)


def _npz(path, rng, n=60, H=20, W=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_events(path, make_events(*random_stream(rng, n, H, W)))


def _build(root, split="train", **kw):
    return build_dataset("events-folder", split, root=str(root), T=2, **{**KW, **kw})


def _names(ds):
    return [s.sample_id for s in ds.samples]


def test_classes_from_folders_and_a_seeded_stratified_split(tmp_path):
    rng = np.random.default_rng(0)
    for c, n in (("owl", 1), ("cat", 5), ("dog", 8)):
        for i in range(n):
            _npz(tmp_path / c / ("session1" if i % 2 else "") / f"r{i}.npz", rng)
    (tmp_path / "cat" / "notes.txt").write_text("not a recording")
    (tmp_path / ".hidden").mkdir()
    train, test = _build(tmp_path, test_fraction=0.25), _build(tmp_path, "test", test_fraction=0.25)
    assert train.classes == ["cat", "dog", "owl"] and train.num_classes == test.num_classes == 3
    assert get_dataset_info("events-folder").extra["count_classes"](str(tmp_path)) == 3
    assert train.input_size == (2, 20, 30)  # the events' extent: .npz files name no sensor
    assert not set(_names(train)) & set(_names(test)) and len(train) + len(test) == 14
    per_class = [sum(s.label == k for s in test.samples) for k in range(3)]
    assert per_class == [1, 2, 0]  # round(0.25 n), at least one, never a whole class (owl has one file)
    assert "cat/session1/r1.npz" in _names(train) + _names(test)
    x, y = test[0]
    assert x.shape == (2, 2, 20, 30) and x.sum() == 60 and y == test.samples[0].label
    # the same seed gives the same split; another seed another; a new dog file leaves the cats' split alone
    assert _names(_build(tmp_path, "test", test_fraction=0.25)) == _names(test)
    assert _names(_build(tmp_path, "test", test_fraction=0.25, seed=1)) != _names(test)
    _npz(tmp_path / "dog" / "r9.npz", rng)
    cats = [n for n in _names(_build(tmp_path, "test", test_fraction=0.25)) if n.startswith("cat/")]
    assert cats == [n for n in _names(test) if n.startswith("cat/")]


def test_split_files_keep_their_order_and_are_checked(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        for i in range(3):
            _npz(tmp_path / c / f"{i}.npz", rng)
    (tmp_path / "train.txt").write_text("# my split\nb/2.npz\na/0.npz\n\nb/0.npz\na/1.npz\n")
    (tmp_path / "test.txt").write_text("a/2.npz\nb/1.npz  # the hard one\n")
    kw = dict(split_files=["train.txt", str(tmp_path / "test.txt")])
    train, test = _build(tmp_path, **kw), _build(tmp_path, "test", **kw)
    assert _names(train) == ["b/2.npz", "a/0.npz", "b/0.npz", "a/1.npz"] and _names(test) == ["a/2.npz", "b/1.npz"]
    assert [s.label for s in train.samples] == [1, 0, 1, 0]
    for text, message in (("a/0.npz\n", "both train and test"), ("a/7.npz\n", "not found"),
                          ("c.npz\n", "not inside a class folder"), ("a/2.npz\na/2.npz\n", "more than once")):
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(SpikeformerError, match=message):
            _build(tmp_path, split_files=["train.txt", "bad.txt"])
    with pytest.raises(SpikeformerError, match="two text files"):
        _build(tmp_path, split_files="train.txt")


def test_sensor_named_by_the_files_and_worked_out_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    header = JAER_HEADER + b"# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C\r\n"
    for c in ("left", "right"):
        for i in range(3):
            (tmp_path / c).mkdir(exist_ok=True)
            jaer_file(tmp_path / c / f"{i}.aedat", *davis_recording(rng, 300, 180, 240)[:2], header)
    _npz(tmp_path / "left" / "extra.npz", rng, H=100, W=200)  # names no sensor; fits the DAVIS240
    ds = _build(tmp_path)
    assert ds.input_size == (2, 180, 240) and ds[0][0].shape == (2, 2, 180, 240)
    record = tmp_path / "spikeformer_cache" / "events-folder" / "sensor_size.json"
    assert record.is_file()

    def no_probe(path):
        raise AssertionError("the sensor size should come from sensor_size.json")

    monkeypatch.setattr(events_folder, "_probe", no_probe)
    assert _build(tmp_path, "test").input_size == (2, 180, 240)
    monkeypatch.undo()
    assert _build(tmp_path, resize=64).input_size == (2, 64, 64)
    # a recording of another camera: refused, unless the frame size is set
    jaer_file(tmp_path / "right" / "346.aedat", *davis_recording(rng, 300, 260, 346)[:2],
              JAER_HEADER + b"# AEChip: eu.seebetter.ini.chips.davis.Davis346B\r\n")
    with pytest.raises(SpikeformerError, match="different sensors: 240x180.*346x260"):
        _build(tmp_path)
    assert _build(tmp_path, "test", sensor_size=[260, 346], test_fraction=0.5).input_size == (2, 260, 346)


def test_mixed_formats_in_one_folder(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_aedat2(tmp_path / "a" / "1.aedat", *random_stream(rng, 50, 128, 128))  # DVS128: 128x128
    write_atis(tmp_path / "a" / "2.bs2", *random_stream(rng, 50, 34, 34))
    write_atis(tmp_path / "b" / "3.bin", *random_stream(rng, 50, 34, 34))
    _npz(tmp_path / "b" / "4.npz", rng)
    ds = _build(tmp_path, test_fraction=0)
    assert len(ds) == 4 and ds.input_size == (2, 128, 128)
    assert [float(ds[i][0].sum()) for i in range(4)] == [50.0, 50.0, 50.0, 60.0]


def test_empty_and_out_of_sensor_recordings_are_refused(tmp_path):
    rng = np.random.default_rng(4)
    for c in ("a", "b"):
        for i in range(2):
            _npz(tmp_path / c / f"{i}.npz", rng)
    write_events(tmp_path / "b" / "9.npz", make_events([], [], [], []))
    with pytest.raises(SpikeformerError, match=r"9\.npz: the recording holds no events"):
        _build(tmp_path, test_fraction=0)
    (tmp_path / "b" / "9.npz").unlink()
    write_events(tmp_path / "b" / "9.npz", make_events([5, 6], [40, 41], [3, 3], [1, 0]))
    with pytest.raises(SpikeformerError, match=r"9\.npz: none of its 2 events falls inside the 30x20 sensor"):
        _build(tmp_path, test_fraction=0, sensor_size=[20, 30])
    with pytest.raises(SpikeformerError, match="no class folders"):
        _build(tmp_path / "a")
    with pytest.raises(SpikeformerError, match="holds no event files"):
        (tmp_path / "c").mkdir()
        _build(tmp_path)


def test_engine_counts_the_class_folders(tmp_path):
    """The model head follows the folder count, with no model_kwargs (the engine asks the dataset)."""
    engine_train = importlib.import_module("spikeformer.engine.train")
    rng = np.random.default_rng(5)
    for c in ("a", "b", "c"):
        _npz(tmp_path / c / "0.npz", rng)
    cfg = build_config(data="events-folder", sets=[f"data_root={tmp_path}"])
    assert engine_train.resolve_model_name(cfg) == "spikformer_dvs_digits_1_64"
    assert engine_train.build_model(cfg).num_classes == 3


# ------------------------------------------------------------------------------- the embedded digits, as files
T = 2


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """Every events-digits stream as a DVS128 AEDAT 2.0 file in its class folder, train.txt / test.txt listing
    them in the dataset's order. Raw fields are written so that SpikingJelly's CIFAR10-DVS mapping of the reader
    (x' = 127 - y, y' = 127 - x, p' = 1 - p) gives the emulated events back."""
    root = tmp_path_factory.mktemp("digits")
    for split in ("train", "test"):
        ds, names = EventDigits(split, T=T), []
        for i in range(len(ds)):
            ev = ds.events(i)
            x, y, p = (ev[k].astype(np.uint32) for k in ("x", "y", "p"))
            rel = f"{int(ds.targets[i])}/{split}_{i:04d}.aedat"
            (root / rel).parent.mkdir(exist_ok=True)
            jaer_file(root / rel, ((127 - x) << 8) | ((127 - y) << 1) | (1 - p), ev["t"])
            names.append(rel)
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


DIGITS_KW = dict(split_files=["train.txt", "test.txt"], sensor_size=[32, 32])


@pytest.mark.parametrize("split", ["train", "test"])
def test_frames_equal_events_digits(digits_folder, split):
    folder = build_dataset("events-folder", split, root=str(digits_folder), T=T, **DIGITS_KW, **KW)
    digits = EventDigits(split, T=T)
    assert len(folder) == len(digits) and folder.num_classes == 10 and folder.input_size == (2, 32, 32)
    for i in range(len(digits)):
        x, label = folder[i]
        ref, ref_label = digits[i]
        assert label == int(ref_label)
        np.testing.assert_array_equal(x.numpy(), ref.numpy())


@pytest.mark.slow
def test_training_matches_events_digits(digits_folder, tmp_path):
    common = [f"T={T}", "lr=0.01", "max_steps=45", "epochs=1", "warmup_epochs=0", "batch_size=32", "seed=0",
              "report=false", "augment=false"]
    ref = train(build_config(data="events-digits", sets=common + [f"out={tmp_path / 'digits'}"]), progress=False)
    got = train(build_config(data="events-folder", sets=common + [
        f"out={tmp_path / 'folder'}", f"data_root={digits_folder}", "model_kwargs.num_classes=10",
        "data_kwargs.split_files=[train.txt,test.txt]", "data_kwargs.sensor_size=[32,32]", "data_kwargs.workers=1",
        "data_kwargs.progress=false"]), progress=False)
    assert got["model"] == ref["model"] == "spikformer_dvs_digits_1_64"
    # same frames, same order, same seed: the same run to the last bit
    assert (got["top1"], got["top5"], got["loss"]) == (ref["top1"], ref["top5"], ref["loss"])
    assert ref["top1"] > 25  # it learned something (chance: 10 %)
