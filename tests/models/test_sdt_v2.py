"""Spike-driven Transformer V2 / Meta-SpikeFormer (spikeformer.models.sdt_v2): parameter counts, the official
state_dict layout and checkpoint import, equality with the official code's logits (golden file), the distillation
head, stage features, and the integer neuron plugged in."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import spikeformer
from spikeformer.kernels.cpu import winograd
from spikeformer.convert.checkpoint import load_checkpoint
from spikeformer.errors import SpikeformerError
from spikeformer.layers import set_numerics
from spikeformer.models import get_model_info
from spikeformer.models.sdt_v2 import MetaSpikeFormer, checkpoint_filter_fn
from spikeformer.neurons import LIF, IntegerLIF

from helpers import assert_golden, golden_for_this_cpu

DATA = Path(__file__).resolve().parents[1] / "data"
# the golden file recorded on a CPU of this machine's kind where one was (tests/helpers.py cpu_kind)
GOLDEN, GOLDEN_HERE = golden_for_this_cpu(DATA / "sdt_v2_golden.safetensors")

# Derived from the official code (classification/models.py) in the reference notes, and measured here by building the
# official model (tests/data/sdt_v2_make_golden.py builds metaspikformer_8_384 with and without kd).
COUNTS = {
    "sdt_v2_15m": (15_112_208, 15_473_208, 15.1),
    "sdt_v2_8_384": (31_333_864, 31_814_864, 31.3),
    "sdt_v2_8_512": (55_350_248, 55_991_248, 55.4),
    "sdt_v2_8_768": (123_741_160, 124_702_160, None),
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _golden_module():
    spec = importlib.util.spec_from_file_location("sdt_v2_make_golden", DATA / "sdt_v2_make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _golden():
    from safetensors import safe_open

    with safe_open(str(GOLDEN), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _n(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts(name):
    plain, kd, paper = COUNTS[name]
    with torch.device("meta"):
        assert _n(spikeformer.create_model(name)) == plain
        assert _n(spikeformer.create_model(name, distill=True)) == kd
    assert get_model_info(name).paper_params_m == paper
    if paper is not None:
        assert abs(plain / 1e6 - paper) < 0.05


def test_registry_entries():
    assert set(spikeformer.list_models("sdt_v2_*")) == {*COUNTS, "sdt_v2_digits"}
    assert get_model_info("sdt_v2_8_512").published == {"imagenet": 80.0}
    assert get_model_info("sdt_v2_8_384").published == {"imagenet": 77.2}
    info = get_model_info("sdt_v2_8_384")
    assert (info.T, info.crop_pct, info.input_size, info.first_conv) == (4, 0.875, (3, 224, 224),
                                                                         "downsample1_1.encode_conv")
    with torch.device("meta"):
        model = spikeformer.create_model("sdt_v2_8_512")
    assert [(f["num_chs"], f["reduction"], f["module"]) for f in model.feature_info] == [
        (128, 4, "ConvBlock1_2.0"), (256, 8, "ConvBlock2_2.0"), (512, 16, "block3.5"), (640, 16, "block4.1")]
    assert all(isinstance(f, dict) for f in model.feature_info)
    named = dict(model.named_modules())
    assert all(f["module"] in named for f in model.feature_info)


# ---------------------------------------------------------------------------------------------------------------
# official layout and checkpoints


def _official_layout():
    meta, _ = _golden()
    return {k: tuple(v) for k, v in json.loads(meta["official_layout"]).items()}


def test_state_dict_is_the_official_layout():
    official = _official_layout()  # measured on the official metaspikformer_8_384(kd=True)
    with torch.device("meta"):
        ours = spikeformer.create_model("sdt_v2_8_384", distill=True).state_dict()
    assert set(ours) == set(official)
    for k, shape in official.items():
        want = shape[:-1] if k.endswith(("fc1_conv.weight", "fc2_conv.weight")) else shape  # Conv1d -> TokenLinear
        assert tuple(ours[k].shape) == want, k


def _small_official(seed=0):
    """An official-layout state_dict (Conv1d MLP kernels) of a narrow model, distinct values everywhere."""
    model = MetaSpikeFormer(embed_dim=(16, 32, 64, 64), depths=(1, 1), num_classes=10, distill=True)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(int(torch.randint(1, 1000, (), generator=g)))
        else:
            v = torch.randn(v.shape, generator=g)
            sd[k] = v.unsqueeze(-1) if k.endswith(("fc1_conv.weight", "fc2_conv.weight")) else v
    return sd


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "module"])
def test_official_checkpoint_loads_strictly(tmp_path, wrapper):
    official = _small_official()
    obj = {"model": official, "epoch": 199} if wrapper == "model" else {"state_dict": official} \
        if wrapper == "state_dict" else {f"module.{k}": v for k, v in official.items()}
    path = tmp_path / "checkpoint-199.pth"
    torch.save(obj, path)
    model = MetaSpikeFormer(embed_dim=(16, 32, 64, 64), depths=(1, 1), num_classes=10, distill=True)
    load_checkpoint(model, path)
    own = model.state_dict()
    assert set(own) == set(official)
    for k, v in official.items():
        assert torch.equal(own[k], v[..., 0] if own[k].dim() == v.dim() - 1 else v), k


def test_distillation_checkpoint_needs_distill_model():
    official = _small_official()
    plain = MetaSpikeFormer(embed_dim=(16, 32, 64, 64), depths=(1, 1), num_classes=10)
    with pytest.raises(SpikeformerError, match="distill=True"):
        checkpoint_filter_fn(official, plain)
    # without head_kd it loads (strict) into the plain model
    sd = checkpoint_filter_fn({k: v for k, v in official.items() if not k.startswith("head_kd.")}, plain)
    plain.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# equality with the official code (tests/data/sdt_v2_make_golden.py)


@pytest.mark.parametrize("distill", [False, True])
def test_logits_equal_official_8_384(distill):
    """The full 8-384 (T=4, 64x64 input) on rounding-proof dyadic weights: exact numerics bit for bit, and fast."""
    gm = _golden_module()
    meta, t = _golden()
    model = spikeformer.create_model("sdt_v2_8_384", T=int(meta["T"]), distill=distill)
    model.load_state_dict(gm.golden_weights({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                            int(meta["seed"])))
    gm.set_golden_eps(model)
    model.eval()
    x = (t["input"].float() - 128) / 32
    ref = t["logits_kd" if distill else "logits"]
    assert ref.std() > 0.5  # not a dead network
    set_numerics(model, "exact")
    with torch.no_grad():
        exact = model(x)
    assert torch.equal(exact, ref), (exact - ref).abs().max().item()
    set_numerics(model, "fast")
    with torch.no_grad(), winograd.disabled():  # Winograd's 1/6 and 1/24 are not rounding-proof: its own test
        fast = model(x)
    assert (fast - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_logits_equal_official_generic_weights():
    """Gaussian weights (not rounding-proof) on a narrow model: only the official operations give these bits."""
    gm = _golden_module()
    meta, t = _golden()
    c = json.loads(meta["random_case"])
    model = MetaSpikeFormer(embed_dim=c["embed_dim"], num_heads=c["num_heads"], num_classes=c["num_classes"],
                            T=c["T"])
    model.load_state_dict(gm.random_weights({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                            int(meta["seed"])))
    model.eval()
    set_numerics(model, "exact")
    with torch.no_grad():
        logits = model((t["input_random"].float() - 128) / 32)
    assert_golden(logits, t["logits_random"], GOLDEN_HERE, 1e-4)


# ---------------------------------------------------------------------------------------------------------------
# behaviour


def test_forward_backward_stages_and_distillation():
    torch.manual_seed(0)
    model = spikeformer.create_model("sdt_v2_digits", T=2, distill=True).train()
    x = torch.randn(3, 1, 16, 16)
    stages = model.forward_stages(x)
    assert [tuple(s.shape[2:]) for s in stages] == [(16, 8, 8), (32, 4, 4), (64, 2, 2), (64, 2, 2)]
    assert [s.shape[2] for s in stages] == [f["num_chs"] for f in model.feature_info]
    assert [16 // s.shape[-1] for s in stages] == [f["reduction"] for f in model.feature_info]
    out = model(x)
    assert out.shape == (3, 10)  # the two heads' mean unless distilled training is asked for
    model.set_distilled_training(True)
    y, y_kd = model(x)
    (y.logsumexp(-1).sum() + y_kd.logsumexp(-1).sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for n in ("downsample1_1.encode_conv.weight", "ConvBlock1_1.0.Conv.dwconv.weight",
              "block3.0.attn.q_conv.0.body.2.0.weight", "block4.0.mlp.fc1_conv.weight"):
        assert grads[n].abs().sum() > 0, n  # surrogate gradients reach every kind of layer
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_per_step(x).mean(0), rtol=0, atol=1e-5)
    model.reset_classifier(4)
    assert model.head_kd.out_features == 4 and model(x).shape == (3, 4)
    plain = spikeformer.create_model("sdt_v2_digits")
    with pytest.raises(SpikeformerError, match="distill=True"):
        plain.set_distilled_training(True)


def test_integer_neuron_plugs_in():
    torch.manual_seed(0)
    lif = spikeformer.create_model("sdt_v2_digits")
    assert {type(m) for m in lif.modules() if isinstance(m, (LIF, IntegerLIF))} == {LIF}
    model = spikeformer.create_model("sdt_v2_digits", neuron="ilif").train()  # batch statistics: a lively network
    neurons = [m for m in model.modules() if isinstance(m, IntegerLIF)]
    assert len(neurons) == 35 and all(m.D == 4 and m.decay == 0.25 for m in neurons)
    assert model.block3[0].attn.attn_lif.v_threshold == 0.5  # the attention neuron keeps its threshold
    seen = []
    hook = model.block3[0].attn.q_lif.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        out = model(torch.randn(2, 1, 16, 16))
    hook.remove()
    q = seen[0]
    assert torch.equal(q, q.round()) and q.max() <= 4 and q.min() >= 0 and q.max() > 1  # counts, not spikes
    assert out.shape == (2, 10)
    nilif = spikeformer.create_model("sdt_v2_digits", neuron={"type": "nilif", "D": 8})
    assert all(m.norm == 8 for m in nilif.modules() if isinstance(m, IntegerLIF))


def test_fast_and_exact_agree_on_integer_neurons():
    torch.manual_seed(0)
    model = spikeformer.create_model("sdt_v2_digits", neuron="multispike", T=2).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        fast = model(x)
        set_numerics(model, "exact")
        exact = model(x)
    assert (fast - exact).abs().max().item() <= 1e-4 * max(1.0, exact.abs().max().item())


def test_bad_options_are_clear_errors():
    with pytest.raises(SpikeformerError, match="embed_dim"):
        spikeformer.create_model("sdt_v2_digits", embed_dim=(16, 32, 64))
    with pytest.raises(SpikeformerError, match="num_heads"):
        spikeformer.create_model("sdt_v2_digits", num_heads=3)
    with pytest.raises(SpikeformerError, match="stem_stride"):
        spikeformer.create_model("sdt_v2_digits", stem_stride=4)
    with pytest.raises(SpikeformerError, match="input channels"):
        spikeformer.create_model("sdt_v2_digits")(torch.randn(1, 3, 16, 16))
