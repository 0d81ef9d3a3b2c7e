"""Masked Spiking Transformer: parameter counts of the official builds, equality with the official code (ANN logits
and converted-SNN per-step outputs, tests/data/mst_golden.safetensors), strict checkpoint loading, Random Spike
Masking."""

import json
from pathlib import Path

import pytest
import torch

import spikeformer
from spikeformer.analysis.conversion_report import snn_energy_report
from spikeformer.convert import QCFS, ann_to_snn, set_masking_ratio, simulate
from spikeformer.errors import SpikeformerError
from spikeformer.models.mst import checkpoint_filter_fn

from helpers import assert_golden, golden_for_this_cpu, skip_unless_recorded

# recorded on a CPU of this machine's kind (tests/helpers.py cpu_kind)
GOLDEN, GOLDEN_HERE = golden_for_this_cpu(Path(__file__).resolve().parents[1] / "data" / "mst_golden.safetensors")
SMALL = dict(img_size=32, patch_size=4, in_chans=3, num_classes=7, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4),
             window_size=4)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the float32 goldens were made on one thread
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def golden():
    from safetensors import safe_open

    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
        data = {k: f.get_tensor(k) for k in f.keys()}

    def case(name):
        c = json.loads(meta[name])
        sd = {k[len(name) + 4:]: (v.float() if v.dtype == torch.float16 else v)
              for k, v in data.items() if k.startswith(name + ".sd.")}
        out = {k[len(name) + 1:]: v for k, v in data.items() if k.startswith(name + ".") and ".sd." not in k}
        return c, sd, out

    return case


def _small(c: dict, numerics: str = "exact", **kw):
    model = spikeformer.create_model("mst_swin_t", numerics=numerics, mlp_norm=c["dataset"] == "imagenet",
                                     masking_ratio=c["masking_ratio"], drop_path_rate=0.0, **SMALL, **kw)
    return model


# ------------------------------------------------------------------------------------------------ configurations
@pytest.mark.parametrize("name, kw, weights", [
    ("mst_swin_t", {}, 28_332_514),  # official build, ImageNet
    ("mst_swin_t_cifar", {}, 27_527_044),  # official build, dataset='cifar10' (no MLP BatchNorms)
    ("mst_swin_t_cifar", {"num_classes": 100}, 27_596_254),
    ("mst_digits", {}, 137_334),  # the official class at the mst_digits settings
])
def test_param_counts_equal_official(name, kw, weights):
    with torch.device("meta"):
        model = spikeformer.create_model(name, **kw)
    ups = [m for m in model.modules() if isinstance(m, QCFS)]
    total = sum(p.numel() for p in model.parameters())
    assert total - len(ups) == weights
    assert len(ups) == (42 if name == "mst_digits" else 124)


def test_configs():
    info = spikeformer.models.get_model_info
    assert info("mst_swin_t").input_size == (3, 224, 224) and info("mst_swin_t").num_classes == 1000
    assert info("mst_swin_t_cifar").input_size == (3, 224, 224) and info("mst_swin_t_cifar").dataset == "cifar10"
    assert info("mst_digits").input_size == (1, 16, 16) and info("mst_digits").dataset == "digits"
    m = spikeformer.create_model("mst_digits", masking_ratio=0.75)
    assert m.T == 1 and m.masking_ratio == 0.75
    with pytest.raises(SpikeformerError, match="masking ratio"):
        spikeformer.create_model("mst_digits", masking_ratio=1.0)


# ---------------------------------------------------------------------------------------- golden: the official code
@pytest.mark.parametrize("case", ["imagenet", "cifar"])
def test_golden_ann_and_snn(golden, case):
    skip_unless_recorded(GOLDEN_HERE, "mst_make_golden.py")
    c, sd, out = golden(case)
    x = out["input"].float()
    model = _small(c)
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), out["ann32"])  # exact numerics, fp32: bit for bit
        assert torch.equal(simulate(ann_to_snn(model), x, 32), out["snn32"])
        model.double()
        assert torch.equal(model(x.double()), out["ann64"])
        assert torch.equal(simulate(ann_to_snn(model), x.double(), 32), out["snn64"])
        # fast numerics: the same float64 values (in float32 they differ by rounding only)
        fast = _small(c, "fast").double()
        fast.load_state_dict(model.state_dict())
        fast.eval()
        assert torch.equal(fast(x.double()), out["ann64"])
    model.train()
    assert torch.equal(model(x.double()), out["train64"])  # batch statistics


def test_golden_masked_draws_the_official_masks(golden):
    skip_unless_recorded(GOLDEN_HERE, "mst_make_golden.py")
    c, sd, out = golden("masked")
    x = out["input"].double()
    model = _small(c)
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    model.double().eval()
    with torch.no_grad():
        torch.manual_seed(3)
        assert torch.equal(model(x), out["ann64"])
        snn = ann_to_snn(model)
        torch.manual_seed(4)
        assert torch.equal(simulate(snn, x, 8), out["snn64"])


# ------------------------------------------------------------------------------------------------ checkpoints
def test_official_checkpoint_loads_strictly(golden, tmp_path):
    c, sd, out = golden("imagenet")
    path = tmp_path / "best_model.pth"
    torch.save({"model": sd, "max_accuracy": 12.5, "epoch": 3}, path)  # main.py's layout, with the buffers
    model = spikeformer.create_model("mst_swin_t", checkpoint_path=str(path), numerics="exact", drop_path_rate=0.0,
                                     **SMALL).eval()
    with torch.no_grad():
        logits = model(out["input"].float())
    assert_golden(logits, out["ann32"], GOLDEN_HERE, 1e-4 * max(1.0, out["ann32"].abs().max().item()))


def test_bad_checkpoints_give_one_clear_error(golden, tmp_path):
    c, sd, _ = golden("imagenet")
    # another family's checkpoint: no QCFS thresholds
    other = spikeformer.create_model("spikformer_digits_1_64").state_dict()
    torch.save({"model": other}, tmp_path / "other.pth")
    with pytest.raises(SpikeformerError, match="not an MST"):
        spikeformer.create_model("mst_swin_t", checkpoint_path=str(tmp_path / "other.pth"), **SMALL)
    # an MST checkpoint of the ImageNet layout into the CIFAR build (which has no MLP BatchNorms)
    torch.save({"model": sd}, tmp_path / "imagenet.pth")
    with pytest.raises(SpikeformerError, match=r"unexpected keys: .*mlp\.norm1"):
        spikeformer.create_model("mst_swin_t_cifar", checkpoint_path=str(tmp_path / "imagenet.pth"), **SMALL)
    # a key missing
    torch.save({"model": {k: v for k, v in sd.items() if k != "head.bias"}}, tmp_path / "cut.pth")
    with pytest.raises(SpikeformerError, match=r"1 missing keys: head\.bias"):
        spikeformer.create_model("mst_swin_t", checkpoint_path=str(tmp_path / "cut.pth"), **SMALL)
    # a truncated file
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "imagenet.pth").read_bytes()[:1000])
    with pytest.raises(SpikeformerError, match="truncated"):
        spikeformer.create_model("mst_swin_t", checkpoint_path=str(tmp_path / "trunc.pth"), **SMALL)


# ------------------------------------------------------------------------------------------- Random Spike Masking
def test_no_mask_is_drawn_at_ratio_zero():
    model = spikeformer.create_model("mst_digits").eval()
    x = torch.randn(2, 1, 16, 16)
    torch.manual_seed(0)
    with torch.no_grad():
        model(x)
    after = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(4))  # the forward pass did not touch the generator


def test_mlp_masking_is_an_option_off_by_default():
    torch.manual_seed(0)
    model = spikeformer.create_model("mst_digits", masking_ratio=0.5).eval()
    mlp = model.layers[0].blocks[0].mlp
    assert not mlp.mask_mlp
    x = torch.rand(2, 64, 32) * 2  # QCFS outputs in [0, up]
    with torch.no_grad():
        torch.manual_seed(1)
        a = mlp(x)
        torch.manual_seed(2)
        assert torch.equal(mlp(x), a)  # no random draw in the MLP
        mlp.mask_mlp = True
        torch.manual_seed(1)
        assert not torch.equal(mlp(x), a)


def test_masking_lowers_sops():
    torch.manual_seed(0)
    model = spikeformer.create_model("mst_digits").eval()
    with torch.no_grad():  # a working point where every layer fires: thresholds at the activations' scale
        for q in model.modules():
            if isinstance(q, QCFS):
                q.up.fill_(0.5)
    snn = ann_to_snn(model)
    x = torch.randn(2, 1, 16, 16)
    sops, qk = {}, {}
    for r in (0.0, 0.5, 0.75):
        assert set_masking_ratio(snn, r) > 0
        torch.manual_seed(0)
        rep = snn_energy_report(snn, x, steps=4)
        sops[r] = rep.totals()["sops"]
        qk[r] = sum(row.sops for row in rep.layers if row.name.endswith("attn.matmul0"))  # q @ k^T
    assert qk[0.0] > qk[0.5] > qk[0.75] > 0
    assert sops[0.0] > sops[0.5] > sops[0.75]
