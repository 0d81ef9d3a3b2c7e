"""The command line: the main job's output, models listing, and one clear error line for each kind of bad input."""

import pytest

from helpers import run_cli


def _one_clear_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_model_suggests_close_names():
    p = run_cli("train", "--model", "spikformer_8_786", "--epochs", "1")
    _one_clear_error(p, "unknown model 'spikformer_8_786'", "spikformer_8_768")


def test_unknown_set_key():
    _one_clear_error(run_cli("train", "--set", "epoch=2"), "unknown config key 'epoch'", "epochs")


def test_unreadable_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1,\n")
    _one_clear_error(run_cli("train", "--config", bad), "not valid YAML")
    _one_clear_error(run_cli("train", "--config", tmp_path / "nope.yaml"), "config file not found")


def test_missing_and_corrupt_checkpoint(tmp_path):
    _one_clear_error(run_cli("eval", "--checkpoint", tmp_path / "none.safetensors"), "checkpoint not found")
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _one_clear_error(run_cli("eval", "--checkpoint", corrupt, "--model", "spikformer_digits_1_64"), "truncated")
    pth = tmp_path / "c.pth"
    pth.write_bytes(b"PK\x03\x04 this is not a zip")
    _one_clear_error(run_cli("eval", "--checkpoint", pth, "--model", "spikformer_digits_1_64"),
                     "weights_only=True")


def test_unknown_dataset():
    _one_clear_error(run_cli("train", "--data", "cifar-10"), "unknown dataset 'cifar-10'")


def test_models_lists_every_family():
    p = run_cli("models", check=True)
    for family in ("spikformer", "spikingformer", "sdt", "spikingresformer", "spikeformer", "masnn",
                   "spiking_convnet"):
        assert f" {family} " in p.stdout, family
    assert "spikformer_8_768" in p.stdout and "66.34M" in p.stdout and "74.81" in p.stdout


def test_train_then_eval_prints_final_line(tmp_path):
    run = tmp_path / "run"
    p = run_cli("train", "--epochs", "1", "--out", run, "--quiet", "--set", "T=2", "--set", "report=false",
                check=True)
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("top-1: ") and "top-5: " in last and "loss: " in last
    p = run_cli("eval", "--checkpoint", run / "best.safetensors", "--quiet", check=True)
    assert p.stdout.strip().splitlines()[-1].startswith("top-1: ")
    p = run_cli("eval", "--checkpoint", run, "--quiet", check=True)  # a run directory works too
    assert "digits" in p.stdout


def test_convert_official_checkpoint(tmp_path):
    # An official-layout (cifar10dvs/model.py) checkpoint: Conv1d kernels, unused LayerNorms and pos_embed, wrapped
    # as the DVS training script saves it, with DDP's module. prefix.
    import torch

    import spikeformer

    ours = spikeformer.create_model("spikformer_dvs_digits_1_64").eval()
    official = {}
    for k, v in ours.state_dict().items():
        if k.startswith("block.") and "_linear." in k:
            k = k.replace("_linear.", "_conv.")
            v = v.unsqueeze(-1) if v.dim() == 2 else v
        official["module." + k] = v.clone()
    official["module.pos_embed"] = torch.zeros(1, 16, 64)
    official["module.norm.weight"], official["module.norm.bias"] = torch.ones(64), torch.zeros(64)
    official["module.block.0.norm1.weight"] = torch.ones(64)
    torch.save({"model": official, "epoch": 3}, tmp_path / "official.pth")
    out = tmp_path / "ours.safetensors"
    p = run_cli("convert-checkpoint", "--model", "spikformer_dvs_digits_1_64", tmp_path / "official.pth", out,
                check=True)
    assert "wrote" in p.stdout
    back = spikeformer.create_model("spikformer_dvs_digits_1_64", checkpoint_path=str(out)).eval()
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    _one_clear_error(run_cli("convert-checkpoint", "--model", "spikformer_digits_1_64", tmp_path / "official.pth",
                             tmp_path / "x.safetensors"), "does not fit spikformer_digits_1_64")
