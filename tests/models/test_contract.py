"""The model contract (``spikeformer.models._base.SpikingClassifier``) over every registered model: shapes of
``forward`` / ``forward_per_step`` / ``forward_features``, the classifier accessors, ``no_weight_decay`` honoured by
the optimizer, numerics switching both ways without touching the state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spikeformer
from spikeformer.engine.config import DEFAULTS
from spikeformer.engine.train import build_optimizer
from spikeformer.layers import numerics_of, set_numerics
from spikeformer.models import get_model_info, list_models
from spikeformer.models._base import SpikingClassifier

B, T = 2, 2


def _input(name: str) -> torch.Tensor:
    info = get_model_info(name)
    c, h, _ = info.input_size
    side = 16 if h <= 16 else 32  # every family is resolution-agnostic; 32 keeps the ImageNet configs cheap
    g = torch.Generator().manual_seed(0)
    if c == 2:  # event frames [T, B, 2, H, W] of small counts
        return torch.randint(0, 3, (T, B, c, side, side), generator=g).float()
    return torch.rand(B, c, side, side, generator=g) * 2 - 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", list_models(task="classify"))
def test_contract(name):
    torch.manual_seed(0)
    model = spikeformer.create_model(name, T=T).eval()
    info = get_model_info(name)
    assert isinstance(model, SpikingClassifier)
    assert numerics_of(model) == "fast"
    x = _input(name)
    with torch.no_grad():
        out = model(x)
        per = model.forward_per_step(x)
        feats = model.forward_features(x)
    K = info.num_classes
    assert out.shape == (B, K)
    assert per.shape == (T, B, K)
    assert feats.shape == (B, model.num_features)
    assert torch.isfinite(out).all()
    # the per-step logits average to the prediction (the head is affine after the features; rounding only)
    assert (per.mean(0) - out).abs().max().item() <= 1e-4 * max(1.0, out.abs().max().item())

    assert isinstance(model.get_classifier(), nn.Module)
    model.reset_classifier(5)
    assert model.num_classes == 5
    with torch.no_grad():
        assert model(x).shape == (B, 5)
        assert model.forward_per_step(x).shape == (T, B, 5)

    # timm's default-cfg contract: features only after reset_classifier(0); first conv and classifier are real keys
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (B, model.num_features)
    sd = model.state_dict()
    assert info.first_conv + ".weight" in sd, info.first_conv
    model.reset_classifier(K)
    assert info.classifier + ".weight" in model.state_dict(), info.classifier

    names = {n for n, _ in model.named_parameters()}
    nwd = set(model.no_weight_decay())
    assert nwd <= names, f"no_weight_decay names that are not parameters: {sorted(nwd - names)}"

    # numerics: exact and back, same parameters and state_dict keys
    keys = list(model.state_dict())
    set_numerics(model, "exact")
    assert numerics_of(model) == "exact"
    set_numerics(model, "fast")
    assert list(model.state_dict()) == keys


def test_optimizer_honours_no_weight_decay():
    model = spikeformer.create_model("spikeformer_dvs_digits")
    nwd = set(model.no_weight_decay())
    assert nwd, "this family names its embeddings"
    opt = build_optimizer(model, {**DEFAULTS, "weight_decay": 0.05})
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed and not (decayed & nwd)
    assert all(p.ndim > 1 for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"])


def test_create_model_rejects_unknown_numerics():
    with pytest.raises(spikeformer.SpikeformerError, match="numerics must be 'fast' or 'exact'"):
        spikeformer.create_model("spikformer_digits_1_64", numerics="fastest")


def test_timm_keywords_and_unknown_option():
    m = spikeformer.create_model("spikformer_digits_1_64", device="cpu", dtype=torch.float64, pretrained_cfg=None,
                                 pretrained_cfg_overlay={"crop_pct": 0.9}, cache_dir="unused")
    assert next(m.parameters()).dtype == torch.float64 and m.pretrained_cfg["crop_pct"] == 0.9
    with pytest.raises(TypeError, match="Did you mean 'embed_dim'"):
        spikeformer.create_model("spikformer_digits_1_64", embed_dimm=3)
    with pytest.raises(spikeformer.SpikeformerError):
        spikeformer.create_model("spikformer_digits_1_64", embed_dimm=3)
