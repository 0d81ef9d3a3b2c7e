"""Spike-driven Transformer V1 (spikeformer.models.sdt): parameter counts, official checkpoint import, equality with
the official code's logits (golden files), forward/backward of every config, and the 288x288 evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import spikeformer
from spikeformer.convert.checkpoint import load_checkpoint, save_weights
from spikeformer.errors import SpikeformerError
from spikeformer.layers import set_numerics
from spikeformer.models import get_model_info
from spikeformer.models.sdt import SpikeDrivenTransformer, checkpoint_filter_fn

DATA = Path(__file__).parent.parent / "data"
CONFIGS = ["sdt_8_384", "sdt_6_512", "sdt_8_512", "sdt_10_512", "sdt_8_768", "sdt_cifar_2_256", "sdt_cifar_2_512",
           "sdt_dvs_2_256", "sdt_dvs128_2_256"]

# sum(p.numel()) of the official model (BICLab/Spike-Driven-Transformer @3faa822, spike_mode='lif', num_heads=8),
# measured by building it with the official code. It includes the unused talking_heads Conv1d (h*h per block).
# (config, num_classes) -> (official count, depth, paper count in M or None)
OFFICIAL = {
    ("sdt_8_384", 1000): (16_816_536, 8, 16.81),
    ("sdt_6_512", 1000): (23_373_736, 6, 23.37),
    ("sdt_8_512", 1000): (29_689_896, 8, 29.68),
    ("sdt_10_512", 1000): (36_006_056, 10, 36.01),
    ("sdt_8_768", 1000): (66_339_144, 8, 66.34),
    ("sdt_cifar_2_256", 10): (2_567_082, 2, None),
    ("sdt_cifar_2_512", 10): (10_233_546, 2, None),
    ("sdt_cifar_2_512", 100): (10_279_716, 2, 10.28),  # the paper's 10.28M is the CIFAR-100 model
    ("sdt_dvs_2_256", 10): (2_566_794, 2, None),
    ("sdt_dvs128_2_256", 11): (2_567_051, 2, None),
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check_count(ours, name, classes):
    official, depth, paper = OFFICIAL[(name, classes)]
    # ours = the official count without the never-used talking_heads Conv1d(8, 8, 1) of each block
    assert ours == official - depth * 8 * 8
    if paper is not None:
        # The paper prints 2 decimals (copied from Spikformer's table for ImageNet: 29.68 for 29,689,384 is a
        # truncation, 36.01 for 36,005,416 a rounding), so allow one unit in the last place.
        assert abs(ours / 1e6 - paper) <= 0.01 + 1e-9
        assert get_model_info(name).paper_params_m == paper


def test_parameter_count_cifar100():
    with torch.device("meta"):
        model = spikeformer.create_model("sdt_cifar_2_512", num_classes=100)
    _check_count(sum(p.numel() for p in model.parameters()), "sdt_cifar_2_512", 100)


def test_registry_entries():
    assert set(spikeformer.list_models(family="sdt")) == set(CONFIGS)
    info = get_model_info("sdt_8_768")
    assert info.published == {"imagenet": 77.07} and "288" in info.notes
    assert info.crop_pct == 0.95 and info.input_size == (3, 224, 224) and info.T == 4
    assert get_model_info("sdt_cifar_2_512").published == {"cifar10": 95.6, "cifar100": 78.4}
    assert get_model_info("sdt_dvs_2_256").input_size == (2, 64, 64)


# ---------------------------------------------------------------------------------------------------------------
# Official state_dict layout, written out from the official module definitions (module/sps.py, module/ms_conv.py,
# model/spikeformer.py) -- not derived from our model.


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def official_layout(in_chans, embed_dim, depth, num_heads, num_classes, mlp_ratio=4):
    D, H = embed_dim, int(embed_dim * mlp_ratio)
    dims = [in_chans, D // 8, D // 4, D // 2, D]
    out = {}
    for i in range(4):
        sfx = "" if i == 0 else str(i)
        out[f"patch_embed.proj_conv{sfx}.weight"] = (dims[i + 1], dims[i], 3, 3)
        out.update(_bn(f"patch_embed.proj_bn{sfx}", dims[i + 1]))
    out["patch_embed.rpe_conv.weight"] = (D, D, 3, 3)
    out.update(_bn("patch_embed.rpe_bn", D))
    for b in range(depth):
        a = f"block.{b}.attn"
        for n in ("q", "k", "v"):
            out[f"{a}.{n}_conv.weight"] = (D, D, 1, 1)
            out.update(_bn(f"{a}.{n}_bn", D))
        out[f"{a}.talking_heads.weight"] = (num_heads, num_heads, 1)
        out[f"{a}.proj_conv.weight"], out[f"{a}.proj_conv.bias"] = (D, D, 1, 1), (D,)
        out.update(_bn(f"{a}.proj_bn", D))
        m = f"block.{b}.mlp"
        out[f"{m}.fc1_conv.weight"], out[f"{m}.fc1_conv.bias"] = (H, D, 1, 1), (H,)
        out.update(_bn(f"{m}.fc1_bn", H))
        out[f"{m}.fc2_conv.weight"], out[f"{m}.fc2_conv.bias"] = (D, H, 1, 1), (D,)
        out.update(_bn(f"{m}.fc2_bn", D))
    out["head.weight"], out["head.bias"] = (num_classes, D), (num_classes,)
    return out


def _is_param(key):
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def test_official_layout_matches_measured_official_count():
    # the hand-written layout reproduces the parameter count measured on the official code
    lay = official_layout(3, 384, 8, 8, 1000)
    assert sum(torch.Size(s).numel() for k, s in lay.items() if _is_param(k)) == 16_816_536
    lay = official_layout(2, 256, 2, 8, 11)
    assert sum(torch.Size(s).numel() for k, s in lay.items() if _is_param(k)) == 2_567_051


def _random_official(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in layout.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(int(torch.randint(1, 10**6, (), generator=g)))
        else:  # distinct values everywhere, so a tensor landing in the wrong place is caught
            sd[k] = torch.randn(shape, generator=g)
    return sd


def _assert_landed(model, official):
    own = model.state_dict()
    dropped = [k for k in official if k.endswith(".talking_heads.weight")]
    assert len(dropped) == len(model.block)
    assert set(own) == set(official) - set(dropped)
    for k, v in official.items():
        if k in own:
            assert own[k].shape == v.shape, k
            assert torch.equal(own[k], v), k


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "bare_module"])
def test_official_checkpoint_imports_strict(tmp_path, wrapper):
    # ImageNet layout at reduced width/depth (same key structure as every ImageNet config)
    official = _random_official(official_layout(3, 64, 2, 8, 1000))
    if wrapper == "state_dict":  # timm CheckpointSaver layout (without its pickled argparse args)
        obj = {"epoch": 299, "arch": "sdt", "state_dict": official, "optimizer": {"state": {}, "param_groups": []},
               "version": 2, "metric": 77.07}
    elif wrapper == "model":
        obj = {"model": official, "epoch": 3}
    else:  # a bare DDP state_dict
        obj = {f"module.{k}": v for k, v in official.items()}
    path = tmp_path / "official.pth"
    torch.save(obj, path)
    model = SpikeDrivenTransformer(embed_dim=64, depth=2, num_heads=8)
    load_checkpoint(model, path)
    _assert_landed(model, official)


@pytest.mark.parametrize("name,in_chans,classes", [("sdt_cifar_2_256", 3, 10), ("sdt_dvs_2_256", 2, 10)])
def test_create_model_with_official_checkpoint(tmp_path, name, in_chans, classes):
    official = _random_official(official_layout(in_chans, 256, 2, 8, classes), seed=1)
    path = tmp_path / "best.pth.tar"
    torch.save({"state_dict": official}, path)
    model = spikeformer.create_model(name, checkpoint_path=str(path))
    _assert_landed(model, official)
    # and our own format round-trips
    ours = tmp_path / "ours.safetensors"
    save_weights(model, ours)
    again = spikeformer.create_model(name, checkpoint_path=str(ours))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_plif_checkpoint_imports():
    # spike_mode='plif': every MultiStepParametricLIFNode of the official code stores its w, also the never-called
    # attn_lif and rpe_lif, which have no counterpart here
    official = _random_official(official_layout(3, 64, 1, 8, 10))
    names = ["patch_embed.proj_lif", "patch_embed.proj_lif1", "patch_embed.proj_lif2", "patch_embed.proj_lif3",
             "patch_embed.rpe_lif", "head_lif"]
    names += [f"block.0.attn.{n}_lif" for n in ("q", "k", "v", "attn", "talking_heads", "shortcut")]
    names += ["block.0.mlp.fc1_lif", "block.0.mlp.fc2_lif"]
    for i, n in enumerate(names):
        official[f"{n}.w"] = torch.tensor(0.01 * (i + 1))
    model = SpikeDrivenTransformer(embed_dim=64, depth=1, num_classes=10, neuron="plif")
    model.load_state_dict(checkpoint_filter_fn(official, model), strict=True)
    _assert_landed(model, {k: v for k, v in official.items() if k not in ("patch_embed.rpe_lif.w",
                                                                           "block.0.attn.attn_lif.w")})


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    model = SpikeDrivenTransformer(embed_dim=64, depth=2, num_heads=8)
    # another family: Spikformer's official layout has Conv1d [D, D, 1] q/k/v/proj and LayerNorms
    other = _random_official(official_layout(3, 64, 2, 8, 1000))
    for k in list(other):
        if k.endswith(("q_conv.weight", "k_conv.weight", "v_conv.weight", "proj_conv.weight")):
            other[k] = other[k][..., 0]
    other["block.0.norm1.weight"] = torch.ones(64)
    del other["block.1.mlp.fc2_bn.weight"]
    path = tmp_path / "spikformer.pth"
    torch.save({"state_dict": other}, path)
    with pytest.raises(SpikeformerError) as e:
        load_checkpoint(model, path)
    msg = str(e.value)
    assert "block.1.mlp.fc2_bn.weight" in msg and "block.0.norm1.weight" in msg
    assert "missing" in msg and "unexpected" in msg and "shape" in msg

    # a checkpoint of a different width
    small = _random_official(official_layout(3, 32, 2, 8, 1000))
    torch.save(small, path)
    with pytest.raises(SpikeformerError, match="shape mismatches"):
        load_checkpoint(model, path)

    # a truncated file
    good = tmp_path / "good.pth"
    torch.save({"state_dict": _random_official(official_layout(3, 64, 2, 8, 1000))}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SpikeformerError, match="truncated"):
        load_checkpoint(model, cut)


# ---------------------------------------------------------------------------------------------------------------
# Equality with the official code. Each tests/data/sdt_<variant>.safetensors holds a reduced-config official-layout
# state_dict (fp16-representable values), uint8 inputs and the logits the official model (BICLab @3faa822 with
# SpikingJelly 0.0.0.0.12, backend 'torch', eval, fp32) produced for them; tests/data/sdt_make_golden.py rebuilds them.


def _golden(variant):
    from safetensors import safe_open

    path = DATA / f"sdt_{variant}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    sd = {k[len("state_dict."):]: (v.float() if v.is_floating_point() else v)
          for k, v in tensors.items() if k.startswith("state_dict.")}
    return json.loads(meta["model_kwargs"]), sd, tensors


@pytest.mark.parametrize("variant,inputs", [("imagenet", ["input", "input_288"]), ("cifar", ["input"]),
                                            ("dvs", ["input"]), ("dvs128", ["input"])])
def test_logits_equal_official(variant, inputs):
    kwargs, sd, t = _golden(variant)
    model = SpikeDrivenTransformer(**kwargs)
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    model.eval()
    for key in inputs:
        u8 = t[key]
        x = u8.float() if u8.dim() == 5 else (u8.float() / 255.0 - 0.5) / 0.25  # as in sdt_make_golden.py
        ref = t[key.replace("input", "logits")]
        set_numerics(model, "exact")  # the official operations: bit for bit
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == ref.shape
        assert torch.equal(logits, ref), (key, (logits - ref).abs().max().item())
        assert ref.std() > 0.05  # the reference is not a constant (dead network)
        set_numerics(model, "fast")  # the fast blocks: rounding only
        with torch.no_grad():
            fast = model(x)
        assert (fast - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item()), key


# ---------------------------------------------------------------------------------------------------------------
# Forward and backward for every registered configuration (small batch and resolution).


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_count_and_forward_backward(name):
    """Every registered config: its parameter count against the official code and the paper, and one training
    step's forward/backward on CPU (batch 2, 32x32, T=2)."""
    torch.manual_seed(0)
    info = get_model_info(name)
    model = spikeformer.create_model(name, T=2).train()
    _check_count(sum(p.numel() for p in model.parameters()), name, info.num_classes)
    C = info.input_size[0]
    x = torch.rand(2, 2, C, 32, 32) * 2 if C == 2 else torch.randn(2, C, 32, 32)  # DVS frames are [T, B, ...]
    logits = model(x)
    assert logits.shape == (2, info.num_classes)
    logits.logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["patch_embed.proj_conv.weight"].abs().sum() > 0  # surrogate gradients reach the first conv
    assert grads["block.0.attn.q_conv.weight"].abs().sum() > 0


def test_per_step_logits_for_tet():
    torch.manual_seed(0)
    model = spikeformer.create_model("sdt_cifar_2_256").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mean = model(x)
        per_step = model.forward_per_step(x)
    assert per_step.shape == (4, 2, 10)
    torch.testing.assert_close(per_step.mean(0), mean, rtol=0, atol=1e-6)


def test_bad_options_are_clear_errors():
    with pytest.raises(SpikeformerError, match="pooling_stat"):
        spikeformer.create_model("sdt_cifar_2_256", pooling_stat="011")
    with pytest.raises(SpikeformerError, match="num_heads"):
        spikeformer.create_model("sdt_cifar_2_256", num_heads=7)
    model = spikeformer.create_model("sdt_cifar_2_256")
    with pytest.raises(SpikeformerError, match="input channels"):
        model(torch.randn(1, 2, 32, 32))


@pytest.mark.slow
def test_8_768_evaluates_at_288():
    """The published 77.07% row: the 224-trained 8-768 weights evaluated on 288x288 crops (18x18 tokens)."""
    torch.manual_seed(0)
    model = spikeformer.create_model("sdt_8_768", T=1).eval()
    with torch.no_grad():
        grid = model.patch_embed(torch.randn(1, 1, 3, 288, 288))
        logits = model(torch.randn(1, 3, 288, 288))
    assert grid.shape == (1, 1, 768, 18, 18)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
