"""--task reconstruct: a short training on spikecam-digits (metrics, checkpoints, resume), evaluation, the HTML
report, the ``reconstruct`` subcommand on a .dat file, and the official losses (golden values of Model/Loss.py)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeformer.data.spikecam import write_spike_camera
from spikeformer.engine import build_config
from spikeformer.engine.recon_losses import EdgeLoss, ReconLoss, VGG_LAYERS
from spikeformer.engine.reconstruct import (add_parser, evaluate_recon_checkpoint, recon_options, train_reconstruct,
                                            window_centres)
from spikeformer.errors import SpikeformerError

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "spikeformer_recon_golden.safetensors"
SMALL = ["T=9", "batch_size=32", "epochs=2", "report=false", "data_kwargs.size=16", "data_kwargs.digit_size=8",
         "data_kwargs.limit=128", "lr=0.002", "warmup_epochs=0"]


def _cfg(out, *sets, **kw):
    cfg = build_config(data="spikecam-digits", sets=[*SMALL, f"out={out}", *sets], **kw)
    cfg["task"] = "reconstruct"
    return cfg


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: worker threads only add waiting, a lot of it on a busy machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """Two short epochs of spikeformer_recon_digits (128 digits at 16x16, 9-frame windows), the second after a
    resume."""
    out = tmp_path_factory.mktemp("recon") / "run"
    first = train_reconstruct(_cfg(out, "stop_after=1"), progress=False)
    assert first["epoch"] == 1
    result = train_reconstruct(_cfg(out), resume=str(out), progress=False)
    return out, first, result


def test_training_resumes_evaluates_and_checkpoints(run):
    out, first, result = run
    assert result["task"] == "reconstruct" and result["model"] == "spikeformer_recon_digits"
    assert result["epoch"] == 2 and result["n"] == 128
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["step"] == 2 * (128 // 32)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert np.isfinite(result["psnr"]) and 0 < result["ssim"] < 1
    # the baselines are computed once per invocation, on the same held-out windows
    assert result["tfp_psnr"] == first["tfp_psnr"] and result["tfi_psnr"] == first["tfi_psnr"]
    assert json.loads((out / "final.json").read_text())["psnr"] == result["psnr"]
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()

    ev = evaluate_recon_checkpoint(str(out), progress=False)
    assert ev["data"] == "spikecam-digits" and ev["n"] == 128
    assert ev["psnr"] == pytest.approx(result["best_psnr"], abs=1e-9)
    assert ev["tfp_psnr"] == pytest.approx(result["tfp_psnr"], abs=1e-12)


@pytest.mark.slow
def test_a_short_training_beats_the_window_average_by_3_db(tmp_path, one_thread):
    """96 optimizer steps on 512 digits (16x16, 9-frame windows): held-out PSNR at least 3 dB above TFP's."""
    cfg = _cfg(tmp_path / "run", "epochs=6", "data_kwargs.limit=512")
    result = train_reconstruct(cfg, progress=False)
    assert result["n"] == 360 and result["tfp_psnr"] == pytest.approx(21.03, abs=0.01)
    assert result["psnr"] >= result["tfp_psnr"] + 3.0, result


def test_report_shows_spikes_baselines_model_and_ground_truth(run):
    from spikeformer.analysis.recon_report import write_recon_report

    out, _, result = run
    page = write_recon_report(out, samples=3).read_text()
    metrics = re.search(r'<table id="recon-metrics">(.*?)</table>', page, re.S).group(1)
    assert [m for m in ("TFP", "TFI", "spikeformer_recon_digits") if m in metrics] == ["TFP", "TFI",
                                                                                        "spikeformer_recon_digits"]
    assert f"{result['psnr']:.2f}" in metrics and f"{result['tfp_ssim']:.4f}" in metrics
    samples = re.search(r'<table id="recon-samples">(.*?)</table>', page, re.S).group(1)
    assert samples.count("<tr>") == 4 and samples.count("data:image/png;base64,") == 15
    assert "ground truth" in samples and "training curves" in page


def _cli(argv):
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


def test_reconstruct_command_writes_pngs(run, tmp_path):
    from PIL import Image

    out, _, _ = run
    rng = np.random.default_rng(0)
    dat = write_spike_camera(tmp_path / "rec.dat", (rng.random((30, 16, 24)) < 0.3).astype(np.uint8))
    assert _cli(["reconstruct", str(dat), "--checkpoint", str(out), "--out", str(tmp_path / "png"), "--height",
                 "16", "--width", "24", "--stride", "7", "--quiet"]) == 0
    files = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert files == [f"frame_{c:06d}.png" for c in (4, 11, 18, 25)] == [f"frame_{c:06d}.png" for c in
                                                                         window_centres(30, 9, 7)]
    im = np.asarray(Image.open(tmp_path / "png" / files[0]))
    assert im.shape == (16, 24) and im.dtype == np.uint8
    # the window average needs no model
    assert _cli(["reconstruct", str(dat), "--method", "tfp", "--window", "9", "--out", str(tmp_path / "tfp"),
                 "--height", "16", "--width", "24", "--quiet"]) == 0
    first = np.asarray(Image.open(tmp_path / "tfp" / "frame_000004.png"))
    spikes = np.unpackbits(np.frombuffer(dat.read_bytes(), np.uint8), bitorder="little").reshape(30, 16, 24)[:, ::-1]
    assert np.array_equal(first, (np.clip(spikes[:9].mean(0) / 0.6, 0, 1) * 255).astype(np.float32)
                          .astype(np.uint8))
    with pytest.raises(SpikeformerError, match="needs --checkpoint"):
        _cli(["reconstruct", str(dat), "--out", str(tmp_path / "x")])
    with pytest.raises(SpikeformerError, match="not a whole number"):
        _cli(["reconstruct", str(dat), "--method", "tfi", "--out", str(tmp_path / "x")])  # not 250x400


def test_reconstruct_command_reads_an_official_checkpoint(run, tmp_path):
    from safetensors.torch import load_file

    out, _, _ = run
    sd = load_file(str(out / "best.safetensors"))
    pth = tmp_path / "best.pth"
    torch.save({"pre_epoch": 1, "performance": (np.float64(30.0), np.float64(0.9)), "model_state_dict": sd}, pth)
    dat = write_spike_camera(tmp_path / "rec.dat", np.zeros((9, 16, 24), np.uint8))
    _cli(["reconstruct", str(dat), "--checkpoint", str(pth), "--model", "spikeformer_recon_digits", "--out",
          str(tmp_path / "a"), "--height", "16", "--width", "24", "--quiet", "--numerics", "exact"])
    _cli(["reconstruct", str(dat), "--checkpoint", str(out), "--out", str(tmp_path / "b"), "--height", "16",
          "--width", "24", "--quiet", "--numerics", "exact"])
    assert (tmp_path / "a" / "frame_000004.png").read_bytes() == (tmp_path / "b" / "frame_000004.png").read_bytes()
    with pytest.raises(SpikeformerError, match="does not fit spikeformer_recon"):
        _cli(["reconstruct", str(dat), "--checkpoint", str(pth), "--out", str(tmp_path / "c"), "--height", "16",
              "--width", "24"])


def test_training_on_a_spike_reds_folder(tmp_path, one_thread):
    """spike-reds is a data_root dataset: a tiny tree in its layout trains, evaluates and scores its baselines."""
    from PIL import Image

    rng = np.random.default_rng(2)
    root = tmp_path / "reds"
    for split, names in (("train", ["a", "b", "c", "d"]), ("test", ["e", "f"])):
        (root / split / "gt").mkdir(parents=True)
        for n in names:
            write_spike_camera(root / split / "spike" / f"{n}.dat", (rng.random((11, 16, 24)) < 0.3).astype(np.uint8))
            Image.fromarray(rng.integers(0, 256, (16, 24), dtype=np.uint8)).save(root / split / "gt" / f"{n}.png")
    cfg = build_config(data="spike-reds", sets=["model=spikeformer_recon_digits", "T=9", f"data_root={root}",
                                                "data_kwargs.height=16", "data_kwargs.width=24", "batch_size=2",
                                                "epochs=1", "report=false", f"out={tmp_path / 'run'}"])
    cfg["task"] = "reconstruct"
    cfg["recon"] = {"vgg_weights": str(_vgg_file(tmp_path / "vgg19.pth", 19))}  # the perceptual term trains too
    result = train_reconstruct(cfg, progress=False)
    assert result["data"] == "spike-reds" and result["n"] == 2 and result["epoch"] == 1
    assert np.isfinite(result["psnr"]) and np.isfinite(result["tfp_psnr"]) and np.isfinite(result["tfi_psnr"])
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 2


# -------------------------------------------------------------------------------------------------------- options
def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(SpikeformerError, match="unknown option recon.edge_weight.*Did you mean"):
        recon_options({"recon": {"edge_weight": 1}})
    with pytest.raises(SpikeformerError, match="edge_mode must be one of"):
        recon_options({"recon": {"edge_mode": "sobel"}})
    with pytest.raises(SpikeformerError, match="is a classifier"):
        train_reconstruct(_cfg(tmp_path / "a", "model=spikformer_digits_1_64"), progress=False)
    with pytest.raises(SpikeformerError, match="needs spike-camera data"):
        train_reconstruct(_cfg(tmp_path / "b", "model=spikeformer_recon_digits", "data=digits"), progress=False)


# --------------------------------------------------------------------------------------------------------- losses
def test_losses_equal_the_official_code():
    from safetensors.torch import load_file

    g = load_file(str(GOLDEN))
    pred, target = g["loss.pred"], g["loss.target"]
    loss = ReconLoss()
    total, parts = loss(pred, target)
    assert parts["charbonnier"] == pytest.approx(g["loss.charbonnier"].item(), rel=1e-6)
    assert parts["edge"] == pytest.approx(g["loss.edge"].item(), rel=1e-6)
    assert "perceptual" not in parts  # no VGG weights given
    assert total.item() == pytest.approx(100 * parts["charbonnier"] + 5 * parts["edge"], rel=1e-6)
    # the official quirk: x - 9 L(x), so a constant image is -8 times itself away from the borders
    c = torch.full((1, 1, 16, 16), 0.5)
    assert torch.allclose(EdgeLoss("official").band(c)[..., 4:-4, 4:-4], torch.tensor(-4.0))
    assert EdgeLoss("laplacian").band(c)[..., 4:-4, 4:-4].abs().max() < 1e-6


def _vgg_file(path: Path, seed: int) -> Path:
    """The seeded VGG19 weights (conv1_1 .. conv3_1) the golden's perceptual loss was computed with."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recon_make_golden", GOLDEN.with_name(
        "spikeformer_recon_make_golden.py"))
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    torch.save(maker.vgg_weights(seed), path)
    return path


def test_perceptual_loss_equals_the_official_vgg_loss(tmp_path):
    """VGGLoss4 of the official code on the golden images, with the seeded VGG weights the golden was made with."""
    from safetensors.torch import load_file

    g = load_file(str(GOLDEN))
    _vgg_file(tmp_path / "vgg19.pth", int(g["loss.vgg_seed"].item()))
    _, parts = ReconLoss(vgg_weights=str(tmp_path / "vgg19.pth"))(g["loss.pred"], g["loss.target"])
    assert parts["perceptual"] == pytest.approx(g["loss.perceptual"].item(), rel=1e-5)


def test_perceptual_loss_takes_user_vgg_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    shapes = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128)}
    sd = {}
    for i in VGG_LAYERS:
        o, c = shapes[i]
        sd[f"features.{i}.weight"] = torch.randn(o, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(o)
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files hold the classifier too: ignored
    torch.save(sd, tmp_path / "vgg19.pth")
    loss = ReconLoss(vgg_weights=str(tmp_path / "vgg19.pth"))
    x = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    pred = x.clone().requires_grad_(True)
    total, parts = loss(pred, x)
    assert parts["perceptual"] == 0.0
    total2, parts2 = loss(pred + 0.1, x)
    assert parts2["perceptual"] > 0 and total2.item() > total.item()
    total2.backward()
    assert all(p.grad is None for p in loss.vgg.parameters()) and pred.grad is not None
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(SpikeformerError, match="expected VGG19 weights"):
        ReconLoss(vgg_weights=str(tmp_path / "bad.pth"))
