"""Spikformer against the official code (ZK-Zhou/spikformer): its three checkpoint layouts import strictly with every
tensor where it belongs, wrong files are refused by name, and our logits equal the official code's."""

from __future__ import annotations

import pytest
import torch

from spikeformer.layers import set_numerics

import spikeformer
from spikeformer.errors import SpikeformerError
from spikeformer.models import get_model_info
from spikeformer.models import spikformer as sf

from helpers import assert_golden
from official_refs import one_thread, LAYOUTS, bn_entries, golden_input, golden_path, load_golden, random_state_dict


def official_entries(layout: str, D: int, depth: int, num_classes: int, in_chans: int) -> list[tuple[str, tuple]]:
    """``(key, shape)`` of an official Spikformer state_dict (reference 2.8): ``imagenet/model.py`` (Conv1d q/k/v/proj,
    Conv2d MLP), ``cifar10/model.py`` (Linear with bias everywhere) or ``cifar10dvs/model.py`` (Conv1d MLP, plus the
    unused ``pos_embed`` and final ``norm``); every block has the unused ``norm1``/``norm2`` LayerNorms."""
    widths = [in_chans, D // 8, D // 4, D // 2, D]
    out = []
    for i in range(4):
        sfx = "" if i == 0 else str(i)
        out += [(f"patch_embed.proj_conv{sfx}.weight", (widths[i + 1], widths[i], 3, 3))]
        out += bn_entries(f"patch_embed.proj_bn{sfx}", widths[i + 1])
    out += [("patch_embed.rpe_conv.weight", (D, D, 3, 3))] + bn_entries("patch_embed.rpe_bn", D)
    if layout == "dvs":
        out += [("pos_embed", (1, 64, D))]
    for b in range(depth):
        p = f"block.{b}"
        out += [(f"{p}.{ln}.{w}", (D,)) for ln in ("norm1", "norm2") for w in ("weight", "bias")]
        for n in ("q", "k", "v", "proj"):
            if layout == "cifar":
                out += [(f"{p}.attn.{n}_linear.weight", (D, D)), (f"{p}.attn.{n}_linear.bias", (D,))]
            else:
                out += [(f"{p}.attn.{n}_conv.weight", (D, D, 1))]
                out += [(f"{p}.attn.proj_conv.bias", (D,))] if n == "proj" else []
            out += bn_entries(f"{p}.attn.{n}_bn", D)
        for n, (o, i) in (("fc1", (4 * D, D)), ("fc2", (D, 4 * D))):
            kernel = {"imagenet": (o, i, 1, 1), "cifar": (o, i), "dvs": (o, i, 1)}[layout]
            kind = "linear" if layout == "cifar" else "conv"
            out += [(f"{p}.mlp.{n}_{kind}.weight", kernel), (f"{p}.mlp.{n}_{kind}.bias", (o,))]
            out += bn_entries(f"{p}.mlp.{n}_bn", o)
    if layout == "dvs":
        out += [("norm.weight", (D,)), ("norm.bias", (D,))]
    return out + [("head.weight", (num_classes, D)), ("head.bias", (num_classes,))]


def expected_target(key: str) -> str | None:
    """Where an official tensor must land in our model (None: dropped, the official forward never uses it)."""
    if key == "pos_embed" or key.startswith("norm.") or ".norm1." in key or ".norm2." in key:
        return None
    if key.startswith("block."):
        for n in ("q", "k", "v", "proj", "fc1", "fc2"):
            key = key.replace(f".{n}_conv.", f".{n}_linear.")
    return key


CASES = [
    ("spikformer_8_384", "imagenet", "state_dict"),  # timm CheckpointSaver
    ("spikformer_cifar_4_256", "cifar", "state_dict"),
    ("spikformer_dvs_2_256", "dvs", "model"),  # the DVS script saves {'model': ...}
]


def _official_sd(name: str, layout: str) -> dict:
    info = get_model_info(name)
    m = spikeformer.create_model(name)
    return random_state_dict(official_entries(layout, m.embed_dim, len(m.block), info.num_classes, info.input_size[0]))


@pytest.mark.parametrize("name, layout, wrapper", CASES)
def test_official_layout_imports_strictly(tmp_path, name, layout, wrapper):
    sd = _official_sd(name, layout)
    path = tmp_path / "official.pth"
    torch.save({wrapper: {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    ours = spikeformer.create_model(name, checkpoint_path=str(path)).state_dict()
    landed = set()
    for k, v in sd.items():
        target = expected_target(k)
        if target is None:
            continue
        assert ours[target].numel() == v.numel(), k
        assert torch.equal(ours[target], v.reshape(ours[target].shape)), k
        landed.add(target)
    assert landed == set(ours), "every tensor of our model comes from the official file"
    dropped = {k for k in sd if expected_target(k) is None}
    assert len(dropped) == 4 * len([k for k in ours if k.endswith("attn.q_bn.weight")]) + (3 if layout == "dvs" else 0)


def test_spikingformer_checkpoint_is_refused_with_key_names(tmp_path):
    path = tmp_path / "spikingformer.pth"
    torch.save({"state_dict": spikeformer.create_model("spikingformer_8_384").state_dict()}, path)
    with pytest.raises(SpikeformerError) as e:
        spikeformer.create_model("spikformer_8_384", checkpoint_path=str(path))
    msg = str(e.value)
    assert "missing keys: patch_embed.proj_conv1.weight" in msg
    assert "unexpected keys: patch_embed.proj1_conv.weight" in msg


def test_truncated_and_other_config_files_are_refused(tmp_path):
    path = tmp_path / "c256.pth"
    torch.save({"state_dict": _official_sd("spikformer_cifar_4_256", "cifar")}, path)
    with pytest.raises(SpikeformerError, match="shape mismatches: patch_embed.proj_conv.weight"):
        spikeformer.create_model("spikformer_cifar_4_384", checkpoint_path=str(path))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(SpikeformerError, match="truncated"):
        spikeformer.create_model("spikformer_cifar_4_256", checkpoint_path=str(truncated))


FAMILY = "spikformer"
GOLDEN = LAYOUTS[FAMILY]


@pytest.fixture(scope="module")
def golden():
    return load_golden(FAMILY)


@pytest.mark.parametrize("layout", sorted(GOLDEN))
def test_logits_equal_official_code(golden, layout):
    """Official model files run with random weights (tests/data/make_official_golden.py); ours after import."""
    sd, ref = golden[layout]
    s = GOLDEN[layout]
    assert ref.shape == (s["batch"], s["num_classes"]) and ref.std() > 0.1  # not a degenerate reference
    model = sf.Spikformer(variant=layout, in_chans=s["in_chans"], num_classes=s["num_classes"],
                          embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"], T=s["T"])
    model.load_state_dict(sf.checkpoint_filter_fn(sd, model), strict=True)
    set_numerics(model, "exact")  # the official operations: bit for bit (the golden file ran on this CPU kind)
    with torch.no_grad(), one_thread():
        out = model.eval()(golden_input(s))
    assert_golden(out, ref, golden_path(FAMILY)[1], 1e-4)
    set_numerics(model, "fast")  # the fast blocks: rounding only
    with torch.no_grad():
        fast = model(golden_input(s))
    assert (fast - ref).abs().max().item() <= 1e-4
