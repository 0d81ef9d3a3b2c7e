"""Training engine: config handling, exact resume, NaN stop, run-directory checks, accuracy on the digits."""

import json

import pytest

from spikeformer.engine import build_config, train
from spikeformer.engine.config import DEFAULTS
from spikeformer.errors import SpikeformerError

from helpers import max_weight_diff

FAST = ["T=2", "report=false"]


def cfg_for(tmp_path, name, *sets, **kw):
    return build_config(None, [*FAST, *sets], out=str(tmp_path / name), **kw)


def test_config_precedence_and_errors(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("epochs: 7\nlr: 0.01\nmodel_kwargs: {depth: 2}\n")
    cfg = build_config(str(f), ["lr=0.02", "model_kwargs.num_heads=2"], epochs=9)
    assert cfg["epochs"] == 9 and cfg["lr"] == 0.02 and cfg["model_kwargs"] == {"depth": 2, "num_heads": 2}
    assert cfg["batch_size"] == DEFAULTS["batch_size"]
    with pytest.raises(SpikeformerError, match="Did you mean 'epochs'"):
        build_config(None, ["epoch=3"])
    with pytest.raises(SpikeformerError, match="amp must be one of"):
        build_config(None, ["amp=fp8"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(SpikeformerError, match="not valid YAML"):
        build_config(str(bad))
    with pytest.raises(SpikeformerError, match="not found"):
        build_config(str(tmp_path / "missing.yaml"))


def test_resume_equals_uninterrupted(tmp_path):
    full = train(cfg_for(tmp_path, "full", epochs=2), progress=False)
    first = train(cfg_for(tmp_path, "split", "stop_after=1", epochs=2), progress=False)
    assert first["epoch"] == 1
    resumed = train(cfg_for(tmp_path, "split", epochs=2), resume=str(tmp_path / "split"), progress=False)
    assert resumed["epoch"] == 2
    assert max_weight_diff(tmp_path / "full" / "last.safetensors", tmp_path / "split" / "last.safetensors") == 0.0
    assert resumed["top1"] == full["top1"]
    rows = [json.loads(r) for r in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # the run directory holds what the README promises
    run = tmp_path / "full"
    for f in ("config.yaml", "metrics.jsonl", "final.json", "best.safetensors", "last.safetensors",
              "checkpoints/last.json", "checkpoints/best.json"):
        assert (run / f).exists(), f
    assert any((run / "tb").iterdir())
    with pytest.raises(SpikeformerError, match="already holds a run"):
        train(cfg_for(tmp_path, "full", epochs=1), progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import importlib

    T = importlib.import_module("spikeformer.engine.train")

    train(cfg_for(tmp_path, "r", epochs=1), progress=False)
    before = (tmp_path / "r" / "last.safetensors").read_bytes()
    real = T.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(T.F, "cross_entropy", poisoned)
    with pytest.raises(SpikeformerError, match="loss became nan"):
        train(cfg_for(tmp_path, "r", epochs=2), resume=str(tmp_path / "r"), progress=False)
    assert (tmp_path / "r" / "last.safetensors").read_bytes() == before


def test_unwritable_run_dir_reported_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpikeformerError, match="cannot write to the run directory"):
        train(build_config(None, FAST, out=str(blocker / "run")), progress=False)


def test_bf16_autocast_trains(tmp_path):
    r = train(cfg_for(tmp_path, "bf", "amp=bf16", epochs=3), progress=False)
    assert r["top1"] > 50.0  # measured 67.5 (fp32: 74.2) after this short schedule; chance is 10


@pytest.mark.slow
def test_digits_reaches_accuracy_bar(tmp_path):
    # The default recipe, shortened: the full `make run` recipe reaches >= 97% (see README).
    r = train(build_config(None, ["report=false"], epochs=6, out=str(tmp_path / "d")), progress=False)
    assert r["top1"] >= 90.0, r


def test_full_disk_reported_before_training(tmp_path, monkeypatch):
    import importlib
    from collections import namedtuple

    T = importlib.import_module("spikeformer.engine.train")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(T.shutil, "disk_usage", lambda p: usage(10 << 20, 10 << 20, 1 << 20))
    with pytest.raises(SpikeformerError, match="MiB free under"):
        train(cfg_for(tmp_path, "full-disk", epochs=1), progress=False)
    assert not (tmp_path / "full-disk" / "checkpoints").exists()


def test_ema_and_accumulation_resume_exactly(tmp_path):
    sets = ["ema_decay=0.9", "accum_steps=2"]
    full = train(cfg_for(tmp_path, "full", *sets, epochs=2), progress=False)
    train(cfg_for(tmp_path, "split", *sets, "stop_after=1", epochs=2), progress=False)
    resumed = train(cfg_for(tmp_path, "split", *sets, epochs=2), resume=str(tmp_path / "split"), progress=False)
    for name in ("last.safetensors", "best.safetensors"):  # best holds the EMA weights
        assert max_weight_diff(tmp_path / "full" / name, tmp_path / "split" / name) == 0.0, name
    assert resumed["top1"] == full["top1"]
    assert max_weight_diff(tmp_path / "full" / "last.safetensors", tmp_path / "full" / "best.safetensors") > 0
    rows = [json.loads(r) for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 * ((1437 // 32) // 2)  # one optimizer step per two micro-batches
