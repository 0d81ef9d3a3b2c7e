"""SpikingResformer: parameter counts, official checkpoint import, the official code's logits bit for bit (exact
numerics) and up to rounding (fast), the operations each numerics runs, the model contract, DSSA's EMA."""

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spikeformer
from spikeformer.errors import SpikeformerError
from spikeformer.layers import set_numerics
from spikeformer.models import spikingresformer as srf
from spikeformer.models._base import SpikingClassifier

from helpers import golden_for_this_cpu, skip_unless_recorded

# recorded on a CPU of this machine's kind (tests/helpers.py cpu_kind)
GOLDEN, GOLDEN_HERE = golden_for_this_cpu(Path(__file__).resolve().parents[1] / "data" /
                                          "spikingresformer_golden.safetensors")

ARCH = {  # planes, heads, imagenet stem, group size, parametric LIF, num_classes (official model definitions)
    "spikingresformer_ti": ((64, 192, 384), (1, 3, 6), True, 64, False, 1000),
    "spikingresformer_s": ((64, 256, 512), (1, 4, 8), True, 64, False, 1000),
    "spikingresformer_m": ((64, 384, 768), (1, 6, 12), True, 64, False, 1000),
    "spikingresformer_l": ((128, 512, 1024), (2, 8, 16), True, 64, False, 1000),
    "spikingresformer_cifar": ((64, 192, 384), (1, 3, 6), False, 64, False, 10),
    "spikingresformer_cifar_dvs": ((64, 192, 384), (1, 3, 6), False, 64, False, 10),
    "spikingresformer_dvsg": ((32, 96, 192), (1, 3, 6), False, 32, True, 11),
}
NAMES = list(ARCH)

# Every learnable parameter, counted on the official code (xyshi2000/SpikingResformer, commit 3f75127).
OFFICIAL_PARAMS = {
    "spikingresformer_ti": 11_180_992,
    "spikingresformer_s": 17_813_824,
    "spikingresformer_m": 35_601_472,
    "spikingresformer_l": 60_375_680,
    "spikingresformer_cifar": 10_793_152,
    "spikingresformer_cifar_dvs": 10_793_152,
    "spikingresformer_dvsg": 2_709_830,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The golden logits were made with one thread (another count may split a convolution's sums differently);
    # small convolutions gain nothing from threads, and a shared CPU makes OpenMP threads spin for seconds.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def official_layout(name):
    """The official state_dict keys and shapes (models/spikingresformer.py + submodules/layers.py), written out."""
    planes, heads, imnet, gs, plif, classes = ARCH[name]
    out = {}

    def bn(prefix, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.bn.{k}"] = (c,)
        out[f"{prefix}.bn.num_batches_tracked"] = ()

    def sn(prefix):
        if plif:
            out[f"{prefix}.w"] = ()

    k0 = 7 if imnet else 3
    out["prologue.0.weight"] = (planes[0], 3, k0, k0)
    bn("prologue.1", planes[0])
    for i, (c, h, p) in enumerate(zip(planes, heads, (4, 2, 1))):
        j = 0
        if i:
            out[f"layers.{i}.0.conv.weight"] = (c, planes[i - 1], 3, 3)
            bn(f"layers.{i}.0.norm", c)
            sn(f"layers.{i}.0.activation")
            j = 1
        for _ in range(i + 1):
            a = f"layers.{i}.{j}"
            out[f"{a}.firing_rate_x"] = (1, 1, h, 1, 1)
            out[f"{a}.firing_rate_attn"] = (1, 1, h, 1, 1)
            sn(f"{a}.activation_in")
            out[f"{a}.W.weight"] = (2 * c, c, p, p)
            bn(f"{a}.norm", 2 * c)
            sn(f"{a}.activation_attn")
            sn(f"{a}.activation_out")
            out[f"{a}.Wproj.weight"] = (c, c, 1, 1)
            bn(f"{a}.norm_proj", c)
            f = f"layers.{i}.{j + 1}"
            sn(f"{f}.up.0")
            out[f"{f}.up.1.weight"] = (4 * c, c, 1, 1)
            bn(f"{f}.up.2", 4 * c)
            sn(f"{f}.conv.0.0")
            out[f"{f}.conv.0.1.weight"] = (4 * c, gs, 3, 3)
            bn(f"{f}.conv.0.2", 4 * c)
            sn(f"{f}.down.0")
            out[f"{f}.down.1.weight"] = (c, 4 * c, 1, 1)
            bn(f"{f}.down.2", c)
            j += 2
    out["classifier.weight"] = (classes, planes[-1])
    return out


def official_state_dict(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_layout(name).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1234)
        elif "firing_rate" in k:
            sd[k] = torch.rand(shape, generator=g) * 0.3 + 0.01
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g)
    return sd


def meta_model(name, **kw):
    with torch.device("meta"):
        return spikeformer.create_model(name, **kw)


# -- registry and parameter counts -------------------------------------------------------------------------------
def test_all_configs_registered_with_metadata():
    assert set(spikeformer.list_models("spikingresformer_*")) == set(NAMES)
    info = spikeformer.models.get_model_info("spikingresformer_ti")
    assert (info.input_size, info.T, info.num_classes, info.crop_pct) == ((3, 224, 224), 4, 1000, 0.95)
    assert info.published == {"imagenet": 74.34} and info.paper_params_m == 11.14
    assert spikeformer.models.get_model_info("spikingresformer_dvsg").T == 16


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_official_code(name):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name,paper_m,with_bn", [
    ("spikingresformer_ti", 11.14, False),
    ("spikingresformer_s", 17.76, False),
    ("spikingresformer_m", 35.52, False),
    ("spikingresformer_l", 60.38, True),
])
def test_parameter_count_equals_paper(name, paper_m, with_bn):
    """The paper's Ti/S/M counts leave out BN affine parameters (thop counted conv/linear weights only); the L
    number matches the count with them."""
    model = meta_model(name)
    n = sum(p.numel() for k, p in model.named_parameters() if with_bn or not isinstance(
        model.get_submodule(k.rsplit(".", 1)[0]), torch.nn.BatchNorm2d))
    assert round(n / 1e6, 2) == paper_m
    assert spikeformer.models.get_model_info(name).paper_params_m == paper_m


# -- official checkpoints --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_official_layout_maps_onto_model(name):
    layout = official_layout(name)
    assert len(layout) == (249 if ARCH[name][4] else 211)  # as counted on the official models
    model = meta_model(name)
    mapped = srf.checkpoint_filter_fn({k: torch.empty(s, device="meta") for k, s in layout.items()}, model)
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    for k, v in mapped.items():
        assert tuple(ours[k].shape) == tuple(v.shape), k


@pytest.mark.parametrize("name", ["spikingresformer_ti", "spikingresformer_cifar", "spikingresformer_dvsg"])
def test_official_checkpoint_imports_every_tensor(name, tmp_path):
    sd = official_state_dict(name)
    path = tmp_path / "checkpoint_max_acc1.pth"
    # main.py saves {'model', 'optimizer', 'lr_scheduler', 'epoch', 'max_acc1'}; DDP adds 'module.'
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 311, "max_acc1": 74.38}, path)
    model = spikeformer.create_model(name, checkpoint_path=str(path))
    ours = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(ours[k.replace(".bn.", ".")], v), k
    # the firing-rate buffers landed and are what eval mode scales with
    dssa = model.layers[1][1]
    assert torch.equal(dssa.firing_rate_attn, sd["layers.1.1.firing_rate_attn"])
    # attention length L of stage 1 (patch 2) from the config's img_size: 224/4/2/2, 32/2/2, 64/2/2
    expected = {"spikingresformer_ti": 14**2, "spikingresformer_cifar": 8**2, "spikingresformer_dvsg": 16**2}
    assert dssa.lenth == expected[name]


def test_our_checkpoint_round_trip(tmp_path):
    from spikeformer.convert.checkpoint import save_weights

    model = spikeformer.create_model("spikingresformer_dvsg")
    model.load_state_dict(srf.checkpoint_filter_fn(official_state_dict("spikingresformer_dvsg", 3), model))
    path = save_weights(model, tmp_path / "w.safetensors")
    again = spikeformer.create_model("spikingresformer_dvsg", checkpoint_path=str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_other_family_checkpoint_is_refused(tmp_path):
    other = spikeformer.create_model("spikformer_cifar_4_256")
    path = tmp_path / "spikformer.pth"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(SpikeformerError, match=r"missing keys: prologue\.0\.weight.*unexpected keys: patch_embed"):
        spikeformer.create_model("spikingresformer_cifar", checkpoint_path=str(path))


def test_wrong_configuration_is_refused(tmp_path):
    path = tmp_path / "ti.pth"
    torch.save({"model": official_state_dict("spikingresformer_ti")}, path)
    with pytest.raises(SpikeformerError, match=r"shape mismatches: .*layers\.1\.0\.conv\.weight"):
        spikeformer.create_model("spikingresformer_s", checkpoint_path=str(path))
    lif = tmp_path / "cifar.pth"
    torch.save({"model": official_state_dict("spikingresformer_cifar")}, lif)
    with pytest.raises(SpikeformerError, match=r"missing keys: .*activation_in\.w"):  # PLIF model, LIF file
        spikeformer.create_model("spikingresformer_dvsg", checkpoint_path=str(lif))


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ti.pth"
    torch.save({"model": official_state_dict("spikingresformer_cifar")}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpikeformerError, match="truncated"):
        spikeformer.create_model("spikingresformer_cifar", checkpoint_path=str(path))


# -- equality with the official code (golden logits produced by tests/data/spikingresformer_make_golden.py) ----------
def golden_case(case, numerics):
    from safetensors import safe_open

    with safe_open(str(GOLDEN), framework="pt") as f:
        c = json.loads(f.metadata()[case])
        data = {k[len(case) + 1:]: f.get_tensor(k) for k in f.keys() if k.startswith(case + ".")}
    torch.manual_seed(0)
    model = srf.SpikingResformer(
        planes=c["planes"], num_heads=c["num_heads"], depths=c["depths"], patch_sizes=c["patch_sizes"],
        img_size=c["img_size"], T=c["T"], num_classes=c["num_classes"], imagenet_stem=c["imagenet_stem"],
        group_size=c["group_size"], neuron=c["neuron"],
    )
    set_numerics(model, numerics)
    official = {k[3:]: v.float() if v.is_floating_point() else v for k, v in data.items() if k.startswith("sd.")}
    model.load_state_dict(srf.checkpoint_filter_fn(official, model), strict=True)
    return model, data


@pytest.mark.parametrize("case", ["lif_imagenet_stem", "plif_dvs_stem"])
def test_logits_equal_official_code_bit_for_bit(case):
    """Exact numerics run the official operations: the official logits, firing-rate and BatchNorm buffers to the
    last bit (the golden file was made with one thread, as this module pins)."""
    assert torch.get_num_threads() == 1
    skip_unless_recorded(GOLDEN_HERE, "spikingresformer_make_golden.py")
    model, data = golden_case(case, "exact")
    x = data["input"].float()

    # one training-mode step from zero firing-rate buffers: per-step logits, then the buffers it leaves behind
    model.train()
    train_logits = model.forward_per_step(x).detach()
    assert torch.equal(train_logits, data["train_logits"])
    ours = model.state_dict()
    after = srf.checkpoint_filter_fn({k[6:]: v for k, v in data.items() if k.startswith("train.")}, model)
    assert any("firing_rate" in k for k in after) and any("running_var" in k for k in after)
    for k, v in after.items():
        assert torch.equal(ours[k], v), k

    model.eval()
    with torch.no_grad():
        per_step = model.forward_per_step(x)
        logits = model(x)
    ref = data["eval_logits"]
    assert per_step.shape == ref.shape and ref.abs().max() > 0.5
    assert torch.equal(per_step, ref)
    assert torch.equal(logits, ref.mean(0))  # the official loss and accuracy take the mean over T
    assert not torch.allclose(ref[0], ref[-1])  # the logits change over time: the neurons did something


def test_exact_after_fast_is_still_bit_exact():
    """Numerics switch back and forth on a live model: a fast forward leaves nothing (layouts, state) behind."""
    skip_unless_recorded(GOLDEN_HERE, "spikingresformer_make_golden.py")
    model, data = golden_case("lif_imagenet_stem", "fast")
    x = data["input"].float()
    model.eval()
    with torch.no_grad():
        model(x)  # fast, eval mode: no statistics or firing rates change
    set_numerics(model, "exact")
    model.train()
    assert torch.equal(model.forward_per_step(x).detach(), data["train_logits"])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_per_step(x), data["eval_logits"])


@pytest.mark.parametrize("case", ["lif_imagenet_stem", "plif_dvs_stem"])
def test_fast_numerics_equal_official_code_up_to_rounding(case):
    model, data = golden_case(case, "fast")
    x = data["input"].float()
    model.train()
    train_logits = model.forward_per_step(x).detach()
    torch.testing.assert_close(train_logits, data["train_logits"], rtol=0, atol=1e-4)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_per_step(x), data["eval_logits"], rtol=0, atol=1e-4)


class OpLog(TorchDispatchMode):
    """The aten operations of a forward, with the memory layout of every convolution's input."""

    def __init__(self):
        super().__init__()
        self.count, self.conv_inputs = Counter(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.count[name] += 1
        if name == "convolution":
            x = args[0]
            layout = ("nchw" if x.is_contiguous() else
                      "channels_last" if x.is_contiguous(memory_format=torch.channels_last) else "other")
            self.conv_inputs.append((layout, x.shape[-1]))
        return func(*args, **(kwargs or {}))


def test_exact_numerics_run_the_official_operations():
    """Exact: every convolution as an NCHW Conv2d over the merged T*B batch (SpikingJelly's seq_to_ann_forward),
    BatchNorm2d on its output, two batched matmuls per DSSA and one product for the classifier. Fast: channels-last
    frames where a block's maps have at least as many pixels as its widest convolution has channels (here the 32x32
    maps of the first stage), NCHW where they do not (16x16 with 384-768 channels, 8x8 with 768-1536), and 1x1
    convolutions over very few spikes as products over those."""
    torch.manual_seed(0)
    model = spikeformer.create_model("spikingresformer_cifar", T=2, numerics="exact").eval()
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    dssa = sum(isinstance(m, srf.DSSA) for m in model.modules())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad(), OpLog() as exact:
        y_exact = model(x)
    assert exact.count["convolution"] == convs == 33
    assert [c[0] for c in exact.conv_inputs] == ["nchw"] * convs
    assert exact.count["native_batch_norm"] == convs
    assert exact.count["bmm"] == 2 * dssa and exact.count["mm"] == 1

    set_numerics(model, "fast")
    with torch.no_grad(), OpLog() as fast:
        y_fast = model(x)
    assert 0 < fast.count["convolution"] <= convs
    assert {c for c in fast.conv_inputs if c[1] == 32} == {("channels_last", 32)}
    assert {c for c in fast.conv_inputs if c[1] < 32} == {("nchw", 16), ("nchw", 8)}
    torch.testing.assert_close(y_fast, y_exact, rtol=0, atol=1e-4)


# -- the model contract ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spikingresformer_cifar", "spikingresformer_dvsg"])
def test_model_contract(name):
    torch.manual_seed(0)
    model = spikeformer.create_model(name, T=2, img_size=16).eval()
    assert isinstance(model, SpikingClassifier)
    K, D = ARCH[name][5], ARCH[name][0][-1]
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        y, per, feats = model(x), model.forward_per_step(x), model.forward_features(x)
    assert y.shape == (2, K) and per.shape == (2, 2, K) and feats.shape == (2, D)
    assert (per.mean(0) - y).abs().max().item() <= 1e-5
    assert model.get_classifier() is model.classifier and model.classifier.bias is None
    names = {n for n, _ in model.named_parameters()}
    nwd = model.no_weight_decay()
    assert nwd <= names
    assert (len(nwd) == 38) == (name == "spikingresformer_dvsg")  # the PLIF rates, as the official code names them
    keys = list(model.state_dict())
    model.reset_classifier(3)
    assert model.classifier.weight.shape == (3, D) and model.classifier.bias is None
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    model.reset_classifier(K)
    set_numerics(model, "exact")
    assert list(model.state_dict()) == keys


def test_fast_training_step_follows_exact():
    """One training step from the same weights: fast numerics give the exact path's loss and gradients up to
    rounding (a spike flipped by an ulp moves a gradient a little), every gradient finite."""
    torch.manual_seed(0)
    exact = spikeformer.create_model("spikingresformer_cifar", T=2, img_size=16, num_classes=4, numerics="exact")
    fast = copy.deepcopy(exact)
    set_numerics(fast, "fast")
    x, target = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3])
    losses = {}
    for tag, model in (("exact", exact), ("fast", fast)):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        losses[tag] = loss.item()
    assert losses["fast"] == pytest.approx(losses["exact"], abs=1e-4)
    ge, gf = dict(exact.named_parameters()), dict(fast.named_parameters())
    for k, p in gf.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), k
    flat = lambda ps: torch.cat([p.grad.flatten() for p in ps.values()])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(ge), flat(gf), dim=0) > 0.99


# -- DSSA firing-rate scales --------------------------------------------------------------------------------------
def test_dssa_firing_rate_ema():
    torch.manual_seed(0)
    dssa = srf.DSSA(dim=8, num_heads=2, lenth=4, patch_size=2, neuron=spikeformer.neurons.neuron_factory(
        "lif", **srf.LIF_DEFAULTS))
    x1, x2 = torch.randn(2, 3, 8, 4, 4) * 3, torch.randn(2, 3, 8, 4, 4) * 3
    rate = lambda x: dssa.activation_in(x).reshape(2, 3, 2, 4, -1).mean((0, 1, 3, 4), keepdim=True)
    dssa.train()
    dssa(x1)
    torch.testing.assert_close(dssa.firing_rate_x, rate(x1))  # first batch initialises
    dssa(x2)
    torch.testing.assert_close(dssa.firing_rate_x, rate(x1) * 0.999 + rate(x2) * 0.001)
    before = dssa.firing_rate_x.clone()
    dssa.eval()
    dssa(x1)
    assert torch.equal(dssa.firing_rate_x, before)  # eval never updates
    assert "firing_rate_x" in dssa.state_dict() and "firing_rate_attn" in dssa.state_dict()

    loaded = srf.DSSA(8, 2, 4, 2, spikeformer.neurons.neuron_factory("lif", **srf.LIF_DEFAULTS))
    loaded.load_state_dict(dssa.state_dict())
    loaded.train()
    loaded(x2)  # a loaded buffer is EMA-updated, not re-initialised from the batch
    torch.testing.assert_close(loaded.firing_rate_x, before * 0.999 + rate(x2) * 0.001)


def test_fresh_model_in_eval_mode_is_finite():
    model = spikeformer.create_model("spikingresformer_cifar", T=2, img_size=16).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 16, 16) * 3)
    assert y.shape == (1, 10) and torch.isfinite(y).all()


def test_img_size_sets_attention_length():
    assert [m.lenth for m in meta_model("spikingresformer_l").modules() if isinstance(m, srf.DSSA)] == [196] * 6
    assert {m.lenth for m in meta_model("spikingresformer_l", img_size=288).modules()
            if isinstance(m, srf.DSSA)} == {324}


def test_forward_is_time_mean_of_per_step_and_frames_match_images():
    torch.manual_seed(0)
    model = spikeformer.create_model("spikingresformer_dvsg", T=3, num_classes=5, img_size=16)
    sd = official_state_dict("spikingresformer_dvsg")
    sd["classifier.weight"] = torch.randn(5, 192)
    model.load_state_dict(srf.checkpoint_filter_fn(sd, model), strict=True)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y, steps = model(x), model.forward_per_step(x)
        frames = model(x.unsqueeze(0).repeat(3, 1, 1, 1, 1))
    assert steps.shape == (3, 2, 5)
    torch.testing.assert_close(y, steps.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(frames, y, rtol=0, atol=0)


def test_dvs_models_append_polarity_sum():
    torch.manual_seed(0)
    model = spikeformer.create_model("spikingresformer_dvsg", T=2, img_size=16).eval()
    ev = torch.randint(0, 3, (2, 1, 2, 16, 16)).float()
    with torch.no_grad():
        a = model(ev)
        b = model(torch.cat([ev, ev.sum(2, keepdim=True)], 2))
    assert torch.equal(a, b)
    with pytest.raises(SpikeformerError, match="input channels"):
        model(torch.randn(2, 1, 4, 16, 16))


# -- forward and backward for every configuration -------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_cpu(name):
    torch.manual_seed(0)
    classes = ARCH[name][5]
    size = 32 if ARCH[name][2] else 16  # the smallest inputs the ImageNet stem (/4) and three stages allow
    model = spikeformer.create_model(name, T=2, img_size=size)
    model.train()
    if name in ("spikingresformer_cifar_dvs", "spikingresformer_dvsg"):
        x = torch.randint(0, 3, (2, 2, 2, size, size)).float()  # [T, B, polarity, H, W] event counts
    else:
        x = torch.randn(2, 3, size, size) * 2
    y = model(x)
    assert y.shape == (2, classes) and torch.isfinite(y).all()
    torch.nn.functional.cross_entropy(y, torch.arange(2) % classes).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads["prologue.0.weight"].abs().sum() > 0
    rates = [b for k, b in model.named_buffers() if "firing_rate" in k]
    assert len(rates) == 12 and all(r.min() >= 0 for r in rates) and any(r.max() > 0 for r in rates)


def test_silent_head_gives_finite_output_and_gradients():
    """A head that never fires has firing rate 0; the official 1/sqrt(0) scale turns everything into NaN."""
    dssa = srf.DSSA(8, 2, 4, 2, spikeformer.neurons.neuron_factory("lif", **srf.LIF_DEFAULTS)).train()
    x = torch.randn(2, 3, 8, 4, 4) * 3
    x[:, :, :4] = -1.0  # head 0 gets no input spikes
    x.requires_grad_()
    y = dssa(x)
    y.sum().backward()
    assert dssa.firing_rate_x[0, 0, 0].item() == 0 and dssa.firing_rate_x[0, 0, 1].item() > 0
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_block_layout_under_native_bf16():
    """Fast blocks go channels-last where the maps have as many pixels as the widest convolution has channels;
    under native bf16 autocast (oneDNN's bf16 convolutions) from a quarter of that (_BF16_PIXEL_WEIGHT)."""
    from spikeformer.kernels.cpu import bf16 as cpu_bf16

    model = spikeformer.create_model("spikingresformer_cifar", T=1, numerics="fast")
    block = next(m for m in model.modules() if getattr(m, "inner", None) == 768)  # the 192-wide stage's MLP
    x = torch.randn(1, 2, 192, 16, 16)  # 256 pixels against 768 channels
    assert srf._block_frames(block, x, 768)[1:] == (False, True)  # NCHW, small 1x1 convolutions may be GEMMs
    with cpu_bf16.emulation(False), torch.autocast("cpu", dtype=torch.bfloat16):
        y, fast, gemm = srf._block_frames(block, x, 768)
        assert fast and not gemm and srf._is_channels_last(y)
        assert srf._block_frames(block, torch.randn(1, 2, 192, 8, 8), 768)[1] is False  # 256 < 768
    with cpu_bf16.emulation(True), torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 products: the fp32 rule
        assert srf._block_frames(block, x, 768)[1] is False


def test_small_nchw_blocks_run_their_pointwise_convolutions_as_gemms(monkeypatch):
    """On the fast numerics a block that keeps NCHW frames (maps with fewer pixels than its widest convolution has
    channels) runs its 1x1 convolutions of at most POINTWISE_GEMM_MAX_ROWS pixels as GEMMs (layers/blocks.py:
    pointwise_gemm); the exact numerics run every convolution. The logits agree to rounding (no spike flips here)."""
    from torch import nn

    from spikeformer.layers import blocks

    convs = []
    real = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, *a: convs.append(self.kernel_size) or real(self, *a))
    torch.manual_seed(0)
    exact = spikeformer.create_model("spikingresformer_ti", T=2, numerics="exact").train()
    fast = copy.deepcopy(exact)
    spikeformer.layers.set_numerics(fast, "fast")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ye = exact(x)
    n_exact = convs.count((1, 1))
    convs.clear()
    yf = fast(x)
    assert n_exact > 0 and convs.count((1, 1)) < n_exact  # the small stages' 1x1 convolutions became GEMMs
    torch.testing.assert_close(yf, ye, rtol=1e-4, atol=1e-5)
    assert blocks.POINTWISE_GEMM_MAX_ROWS >= 2 * 2 * 8 * 8  # the second stage's maps at this input qualify
