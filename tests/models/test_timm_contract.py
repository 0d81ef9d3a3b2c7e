"""timm's model contract over every registered classifier: what ``tests/test_models.py`` of timm 1.0.x checks in
``test_model_default_cfgs`` / ``test_model_default_cfgs_non_std`` and ``test_model_forward_features``, written for
spiking models.

Our ``forward_features`` is pooled ``[B, D]`` (STYLE.md's contract; pooling is part of every published architecture),
which is the contract timm's non-std test holds its transformer families to: that test's checks are the ones here,
and unpooled maps are checked through ``features_only=True`` as timm's features test does. Differences from timm's
loops, all to stay fast: T=2 steps and inputs of 16 or 32 pixels (as ``test_contract.py``); frames ``[T, B, 2, H, W]``
for event models; feature maps with batch 3, so that T, B and T*B differ (a layout mix-up cannot pass). The
smallest configuration of each family runs by default; the others are marked ``slow`` (the same checks on every
configuration). Feature maps must also have exactly the size of the input divided by their reduction (rounded
either way), where timm allows one more.
"""

from __future__ import annotations

import math

import pytest
import torch

import spikeformer
from spikeformer.models import get_model_info, list_models
from spikeformer.models._features import SpikingFeatures

T, B = 2, 3
NAMES = list_models(task="classify")


def _smallest_per_family(names: list[str]) -> set[str]:
    """One cheap configuration per family: the smallest input, then the smallest published parameter count."""
    def size(n):
        info = get_model_info(n)
        return info.input_size[1] * info.input_size[2], info.paper_params_m or 0.0, n

    families: dict[str, list[str]] = {}
    for n in names:
        families.setdefault(get_model_info(n).family, []).append(n)
    return {min(g, key=size) for g in families.values()}


_FAST = _smallest_per_family(NAMES)
PARAMS = [pytest.param(n, marks=() if n in _FAST else pytest.mark.slow) for n in NAMES]


def _input(name: str, batch: int = B) -> torch.Tensor:
    c, h, _ = get_model_info(name).input_size
    side = 16 if h <= 16 else 32
    g = torch.Generator().manual_seed(0)
    if c == 2:  # event frames of small counts
        return torch.randint(0, 3, (T, batch, c, side, side), generator=g).float()
    return torch.rand(batch, c, side, side, generator=g) * 2 - 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", PARAMS)
def test_model_default_cfgs(name):
    torch.manual_seed(0)
    model = spikeformer.create_model(name, T=T).eval()
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg

    # the config's fields describe the model
    c = cfg["input_size"][0]
    assert len(cfg["input_size"]) == 3 and model.in_chans == c
    assert cfg["num_classes"] == model.num_classes > 0
    assert len(cfg["mean"]) == len(cfg["std"]) == c and all(s > 0 for s in cfg["std"])
    assert 0 < cfg["crop_pct"] <= 1 and cfg["interpolation"] in ("bilinear", "bicubic", "nearest")
    sd = model.state_dict()
    for key in (cfg["classifier"], cfg["first_conv"]):
        assert key + ".weight" in sd, key
    assert model.num_features > 0 and model.head_hidden_size == model.num_features

    x = _input(name, batch=1)  # timm's batch; the feature-map test below checks layouts with T, B, T*B apart
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape == (1, model.num_features)
        assert pre.shape == (1, model.head_hidden_size) and torch.equal(pre, feats)
        # the head on the per-step features gives forward's logits (up to where the mean over time is taken)
        out = model(x)
        head = model.forward_head(model.forward_features_per_step(x))
        assert out.shape == head.shape == (1, model.num_classes)
        assert torch.isfinite(out).all()
        assert (head - out).abs().max().item() <= 1e-4 * max(1.0, out.abs().max().item())

        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(x).shape == pre.shape
    with pytest.raises(TypeError, match="features_only=True"):  # timm's reset_classifier(0, '') asks for maps
        model.reset_classifier(0, "")

    model = spikeformer.create_model(name, T=T, num_classes=0).eval()
    with torch.no_grad():
        assert model(x).shape == (1, model.num_features)


@pytest.mark.parametrize("name", PARAMS)
def test_model_forward_features(name):
    torch.manual_seed(0)
    model = spikeformer.create_model(name, T=T, features_only=True).eval()
    assert isinstance(model, SpikingFeatures) and model.default_cfg["input_size"] == get_model_info(name).input_size
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3  # as timm: every model has at least three feature levels
    assert model.output_fmt == "NCHW"

    x = _input(name)
    H, W = x.shape[-2:]
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[:2] == (B, c)
        # each map is the input size divided by its reduction, rounded down or up (timm allows ceil + 1)
        assert o.shape[2] in (H // r, math.ceil(H / r)) and o.shape[3] in (W // r, math.ceil(W / r)), (o.shape, r)
        assert torch.isfinite(o).all()


def test_timm_create_model_and_registry_cfg():
    """``timm.create_model`` builds our models (STYLE.md: registered with timm), ``features_only`` included, and
    timm's registry holds each model's config."""
    import timm

    for name in NAMES:
        info, cfg = get_model_info(name), timm.models.get_pretrained_cfg(name)
        assert (cfg.input_size, cfg.num_classes, cfg.first_conv, cfg.classifier) == (
            info.input_size, info.num_classes, info.first_conv, info.classifier), name
        assert (tuple(cfg.mean), tuple(cfg.std)) == (tuple(info.mean), tuple(info.std)), name
    m = timm.create_model("spikformer_cifar_4_256", pretrained=False, num_classes=7, T=1)
    assert type(m).__name__ == "Spikformer" and m.num_classes == 7
    f = timm.create_model("spikformer_cifar_4_256", features_only=True, out_indices=(0, 2), T=1)
    assert isinstance(f, SpikingFeatures)
    assert f.feature_info.channels() == [128, 256] and f.feature_info.reduction() == [1, 4]
    with torch.no_grad():
        assert [tuple(o.shape) for o in f(torch.rand(1, 3, 32, 32))] == [(1, 128, 32, 32), (1, 256, 8, 8)]
    with pytest.raises(TypeError):  # an unknown option is timm's TypeError
        timm.create_model("spikformer_cifar_4_256", embed_dimm=3)
