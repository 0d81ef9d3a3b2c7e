"""Spikingformer: published parameter counts, official checkpoint import, equality with the official code's logits,
forward and backward of every configuration."""

from __future__ import annotations

import pytest
import torch

from spikeformer.layers import set_numerics

import spikeformer
from spikeformer.convert.checkpoint import save_weights
from spikeformer.errors import SpikeformerError
from spikeformer.models import get_model_info
from spikeformer.models import spikingformer as sgf
from spikeformer.neurons import LIF

from helpers import assert_golden
from official_refs import one_thread, LAYOUTS, bn_entries, golden_input, golden_path, load_golden, random_state_dict

# Parameters of the model we build. The published counts (README / paper) are these, not the official code's
# sum(p.numel()), which also counts the two LayerNorms per block that forward never calls (4 * D * depth more).
PARAMS = {
    "spikingformer_8_384": 16_816_024,  # paper 16.81M
    "spikingformer_8_512": 29_689_384,  # paper 29.68M
    "spikingformer_8_768": 66_338_632,  # paper 66.34M
    "spikingformer_cifar_4_256": 4_152_106,  # paper 4.15M
    "spikingformer_cifar_2_384": 5_762_746,  # paper 5.76M
    "spikingformer_cifar_4_384": 9_320_122,  # paper 9.32M
    "spikingformer_dvs_2_256": 2_566_666,  # paper 2.57M
}
# sum(p.numel()) of the official code, as printed in its training logs (origin_logs/).
OFFICIAL_CODE_PARAMS = {
    "spikingformer_8_512": 29_705_768,
    "spikingformer_8_768": 66_363_208,
    "spikingformer_dvs_2_256": 2_568_714,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_config_is_registered():
    assert spikeformer.list_models("spikingformer*") == sorted(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_paper(name):
    model = spikeformer.create_model(name)
    n = n_params(model)
    assert n == PARAMS[name]
    paper = get_model_info(name).paper_params_m
    assert abs(n / 1e6 - paper) < 0.01, f"{n / 1e6:.4f}M vs paper {paper}M"
    official = n + 4 * model.embed_dim * len(model.block)  # + the unused norm1/norm2 of every block
    if name in OFFICIAL_CODE_PARAMS:
        assert official == OFFICIAL_CODE_PARAMS[name]
    if name in ("spikingformer_8_384", "spikingformer_8_512"):
        # With the LayerNorms the count would not round to the published number: the paper left them out.
        assert abs(official / 1e6 - paper) >= 0.01


def test_cifar100_heads_and_head_size():
    # cifar100.yml trains D=384 with 8 heads (cifar10.yml: 12); the paper prints the CIFAR-10 count for both.
    m10 = spikeformer.create_model("spikingformer_cifar_4_384")
    m100 = spikeformer.create_model("spikingformer_cifar_4_384", num_classes=100)
    assert m10.block[0].attn.num_heads == 12 and m100.block[0].attn.num_heads == 8
    explicit = spikeformer.create_model("spikingformer_cifar_4_384", num_classes=100, num_heads=12)
    assert explicit.block[0].attn.num_heads == 12
    assert n_params(m100) - n_params(m10) == 90 * (384 + 1)


@pytest.mark.parametrize("name, tau", [("spikingformer_8_384", 2.0), ("spikingformer_cifar_2_384", 2.0),
                                       ("spikingformer_dvs_2_256", 1.5)])
def test_neurons_are_the_official_ones(name, tau):
    model = spikeformer.create_model(name)
    lifs = {n: m for n, m in model.named_modules() if isinstance(m, LIF)}
    # 4 in the tokenizer; per block 5 in attention (input, q, k, v, attention output) and 2 in the MLP
    assert len(lifs) == 4 + 7 * len(model.block)
    assert all(m.tau == tau and m.detach_reset and m.v_reset == 0.0 and m.decay_input for m in lifs.values())
    thresholds = {n: m.v_threshold for n, m in lifs.items()}
    attn_lifs = {f"block.{i}.attn.attn_lif" for i in range(len(model.block))}
    assert {n for n, v in thresholds.items() if v != 1.0} == attn_lifs
    assert set(thresholds.values()) == {1.0, 0.5}


# ---- official checkpoint layouts (reference 3.7; imagenet/, cifar10/ and cifar10-dvs/ model.py) ----------------

def official_entries(layout: str, D: int, depth: int, num_classes: int, in_chans: int) -> list[tuple[str, tuple]]:
    widths = [in_chans, D // 8, D // 4, D // 2, D, D]
    out = []
    for i in range(5):
        stem = f"block{i}" if layout == "cifar" else f"proj{i or ''}"
        out += [(f"patch_embed.{stem}_conv.weight", (widths[i + 1], widths[i], 3, 3))]
        out += bn_entries(f"patch_embed.{stem}_bn", widths[i + 1])
    for b in range(depth):
        p = f"block.{b}"
        out += [(f"{p}.{ln}.{w}", (D,)) for ln in ("norm1", "norm2") for w in ("weight", "bias")]
        for n in "qkv":
            out += [(f"{p}.attn.{n}_conv.weight", (D, D, 1))] + bn_entries(f"{p}.attn.{n}_bn", D)
        out += [(f"{p}.attn.proj_conv.weight", (D, D, 1)), (f"{p}.attn.proj_conv.bias", (D,))]
        out += bn_entries(f"{p}.attn.proj_bn", D)
        out += [(f"{p}.mlp.mlp1_conv.weight", (4 * D, D, 1, 1)), (f"{p}.mlp.mlp1_conv.bias", (4 * D,))]
        out += bn_entries(f"{p}.mlp.mlp1_bn", 4 * D)
        out += [(f"{p}.mlp.mlp2_conv.weight", (D, 4 * D, 1, 1)), (f"{p}.mlp.mlp2_conv.bias", (D,))]
        out += bn_entries(f"{p}.mlp.mlp2_bn", D)
    return out + [("head.weight", (num_classes, D)), ("head.bias", (num_classes,))]


def expected_target(key: str) -> str | None:
    """Where an official tensor must land in our model (None: dropped)."""
    if ".norm1." in key or ".norm2." in key:
        return None
    if key.startswith("patch_embed.block"):
        i, rest = key[len("patch_embed.block"):].split("_", 1)
        return f"patch_embed.proj{'' if i == '0' else i}_{rest}"
    if key.startswith("block."):
        for n in ("q", "k", "v", "proj", "mlp1", "mlp2"):
            key = key.replace(f".{n}_conv.", f".{n}_linear.")
    return key


LAYOUT_CASES = [
    ("spikingformer_8_384", "imagenet", "state_dict"),
    ("spikingformer_cifar_4_256", "cifar", "state_dict"),
    ("spikingformer_dvs_2_256", "dvs", "model"),  # the DVS scripts save {'model': ...}
]


def _official_sd(name: str, layout: str) -> dict:
    info = get_model_info(name)
    m = spikeformer.create_model(name)
    return random_state_dict(official_entries(layout, m.embed_dim, len(m.block), info.num_classes, info.input_size[0]))


@pytest.mark.parametrize("name, layout, wrapper", LAYOUT_CASES)
def test_official_checkpoint_imports_strictly(tmp_path, name, layout, wrapper):
    sd = _official_sd(name, layout)
    path = tmp_path / "official.pth"
    torch.save({wrapper: {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)  # DDP prefix, as saved
    model = spikeformer.create_model(name, checkpoint_path=str(path))
    ours = model.state_dict()
    landed = set()
    for k, v in sd.items():
        target = expected_target(k)
        if target is None:
            continue
        assert torch.equal(ours[target], v.reshape(ours[target].shape)), k
        assert ours[target].numel() == v.numel()
        landed.add(target)
    assert landed == set(ours), "every tensor of our model comes from the official file"
    # the written checkpoint is ours and reloads unchanged
    save_weights(model, tmp_path / "ours.safetensors")
    again = spikeformer.create_model(name, checkpoint_path=str(tmp_path / "ours.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.values()))


def test_spikformer_checkpoint_is_refused_with_key_names(tmp_path):
    path = tmp_path / "spikformer.pth"
    torch.save({"state_dict": spikeformer.create_model("spikformer_8_384").state_dict()}, path)
    with pytest.raises(SpikeformerError) as e:
        spikeformer.create_model("spikingformer_8_384", checkpoint_path=str(path))
    msg = str(e.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    assert "patch_embed.proj1_conv.weight" in msg  # Spikingformer's second tokenizer conv is missing
    assert "patch_embed.proj_conv1.weight" in msg  # Spikformer's SPS naming is unexpected
    # the same through one of our own files (no remapping applies)
    save_weights(spikeformer.create_model("spikformer_cifar_4_256"), tmp_path / "sf.safetensors")
    with pytest.raises(SpikeformerError, match="missing keys: patch_embed.proj1_conv.weight.*unexpected keys: .*fc1_"):
        spikeformer.create_model("spikingformer_cifar_4_256", checkpoint_path=str(tmp_path / "sf.safetensors"))


def test_other_config_and_truncated_file_are_refused(tmp_path):
    path = tmp_path / "c384.pth"
    torch.save({"state_dict": _official_sd("spikingformer_cifar_4_384", "cifar")}, path)
    with pytest.raises(SpikeformerError, match="shape mismatches: patch_embed.proj_conv.weight"):
        spikeformer.create_model("spikingformer_cifar_4_256", checkpoint_path=str(path))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpikeformerError, match="truncated"):
        spikeformer.create_model("spikingformer_cifar_4_384", checkpoint_path=str(truncated))


# ---- logits equal to the official code's ----------------------------------------------------------------------

FAMILY = "spikingformer"
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
    model = sgf.Spikingformer(variant=layout, in_chans=s["in_chans"], num_classes=s["num_classes"],
                              embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"], T=s["T"])
    model.load_state_dict(sgf.checkpoint_filter_fn(sd, model), strict=True)
    set_numerics(model, "exact")  # the official operations: bit for bit (the golden file ran on this CPU kind)
    with torch.no_grad(), one_thread():
        out = model.eval()(golden_input(s))
    assert_golden(out, ref, golden_path(FAMILY)[1], 1e-4)
    set_numerics(model, "fast")  # the fast blocks: rounding only
    with torch.no_grad():
        fast = model(golden_input(s))
    assert (fast - ref).abs().max().item() <= 1e-4


# ---- forward and backward of every configuration ------------------------------------------------------------------

def _small_input(name: str) -> torch.Tensor:
    # reduced resolutions (the models are size-agnostic): 2x2 tokens for ImageNet/DVS, 4x4 for CIFAR
    g = torch.Generator().manual_seed(0)
    if "_dvs_" in name:
        return torch.randint(0, 3, (2, 2, 2, 32, 32), generator=g).float()  # [T, B, 2, H, W] event counts
    if "_cifar_" in name:
        return torch.randn(2, 3, 16, 16, generator=g)
    return torch.randn(1, 3, 32, 32, generator=g)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_forward_backward(name):
    model = spikeformer.create_model(name, T=2)
    x = _small_input(name)
    out = model(x)
    assert out.shape == (x.shape[-4], get_model_info(name).num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    # the surrogate gradient reaches the first convolution through every LIF
    assert model.patch_embed.proj_conv.weight.grad.abs().sum() > 0
    assert model.block[0].attn.q_linear.weight.grad.abs().sum() > 0
