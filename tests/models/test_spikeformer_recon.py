"""SpikeFormer (spike-camera reconstruction): equal to the official code on the same weights and input (golden
outputs of O-OoOvO/SpikeFormer in tests/data, made by spikeformer_recon_make_golden.py), the published parameter
count and key set (official checkpoints load strictly), the registry's task field, the official checkpoint file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import golden_for_this_cpu, skip_unless_recorded

import spikeformer
from spikeformer.errors import SpikeformerError
from spikeformer.layers import set_numerics
from spikeformer.models import get_model_info, list_models
from spikeformer.models.spikeformer_recon import (SpikeFormerRecon, checkpoint_filter_fn, prepare_spikes,
                                                  read_official_checkpoint)

# recorded on a CPU of this machine's kind (AVX2 / AVX512: the outputs differ in the last bits)
GOLDEN, GOLDEN_HERE = golden_for_this_cpu(Path(__file__).resolve().parents[1] / "data" /
                                          "spikeformer_recon_golden.safetensors")


@pytest.fixture(scope="module")
def golden():
    from safetensors import safe_open

    with safe_open(str(GOLDEN), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _small(golden, numerics):
    tensors, meta = golden
    c = json.loads(meta["small"])
    model = SpikeFormerRecon(T=c["inputDim"], dims=c["dims"], heads=c["heads"], ff_expansion=c["ff_expansion"],
                             reduction_ratio=c["reduction_ratio"], num_layers=c["num_layers"],
                             decoder_dim=c["decoder_dim"], out_chans=c["out_channel"]).eval()
    sd = {k[3:]: v.float() for k, v in tensors.items() if k.startswith("sd.")}
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    set_numerics(model, numerics)
    return model


def test_exact_equals_the_official_outputs_bit_for_bit(golden, one_thread):
    skip_unless_recorded(GOLDEN_HERE, "spikeformer_recon_make_golden.py")
    tensors, _ = golden
    model = _small(golden, "exact")
    x, pad = prepare_spikes(tensors["spikes"])
    assert pad == (3, 3, 0, 0) and torch.equal(x, tensors["x"].float())  # the official loader's padding and +-1
    with torch.no_grad():
        y = model(x)
    assert torch.equal(y, tensors["y"])
    # the official evaluation's pixels: crop, clamp, (y + 1) / 2 * 255, truncate
    img = (model.reconstruct(tensors["spikes"])[:, 0] * 255).to(torch.uint8)
    assert torch.equal(img, tensors["image"])


def test_fast_matches_the_official_outputs_to_rounding(golden):
    tensors, _ = golden
    model = _small(golden, "fast")
    with torch.no_grad():
        y = model(tensors["x"].float())
    ref = tensors["y"]
    assert (y - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_published_configuration_matches_the_official_keys_and_count(golden):
    _, meta = golden
    official = json.loads(meta["published"])
    with torch.device("meta"):
        model = spikeformer.create_model("spikeformer_recon")
    assert sum(p.numel() for p in model.parameters()) == int(meta["published_params"]) == 7_581_441
    assert model.T == 65 and model.out_chans == 1
    renamed = checkpoint_filter_fn({k: torch.empty(0) for k in official})
    assert len(renamed) == len(official)  # the renaming is one-to-one
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {new: official[old] for old, new in zip(official, renamed)}
    assert not list(model.buffers())


def test_registry_tells_reconstruction_from_classification():
    assert set(list_models(task="reconstruct")) == {"spikeformer_recon", "spikeformer_recon_digits"}
    assert not set(list_models(task="reconstruct")) & set(list_models(task="classify"))
    info = get_model_info("spikeformer_recon_digits")
    assert info.task == "reconstruct" and info.dataset == "spikecam-digits" and info.T == 33
    model = spikeformer.create_model("spikeformer_recon_digits")
    assert model.pretrained_cfg["task"] == "reconstruct"
    spikes = (torch.rand(2, 33, 30, 36) < 0.2).to(torch.uint8)
    img = model.reconstruct(spikes)
    assert img.shape == (2, 1, 30, 36) and 0 <= img.min() and img.max() <= 1
    with pytest.raises(SpikeformerError, match="windows of 33 frames"):
        model(torch.zeros(1, 8, 32, 32))
    with pytest.raises(SpikeformerError, match="multiples of 8"):
        model(torch.zeros(1, 33, 30, 32))


def test_official_checkpoint_file_loads_strictly(tmp_path, golden):
    """The official SaveModel dict (numpy float64 'performance', optimizer state, DataParallel-free keys) is read
    with weights_only=True and loads strictly after renaming; a pickled object is refused."""
    tensors, _ = golden
    ref = _small(golden, "exact")
    sd = {k[3:]: v.float() for k, v in tensors.items() if k.startswith("sd.")}
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=2e-4)
    path = tmp_path / "best.pth"
    torch.save({"pre_epoch": 7, "performance": (np.float64(31.5), np.float64(0.91)), "model_state_dict": sd,
                "optimizer_state_dict": opt.state_dict()}, path)
    loaded = read_official_checkpoint(path)
    model = _small(golden, "exact")
    for p in model.parameters():
        p.data.zero_()
    model.load_state_dict(checkpoint_filter_fn(loaded, model), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))

    torch.save({"model_state_dict": sd, "hook": Path("x")}, tmp_path / "evil.pth")
    with pytest.raises(SpikeformerError, match="weights_only=True"):
        read_official_checkpoint(tmp_path / "evil.pth")
