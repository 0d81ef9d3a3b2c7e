"""``create_model(name, features_only=True)``: per-stage maps laid out right (tokens back on their grid, frames folded
over time unfolded in the right order), ``feature_time``, ``out_indices``, the early stop, checkpoints, errors.
Every registered family's shapes are checked in ``test_timm_contract.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeformer
from spikeformer.convert import save_weights
from spikeformer.errors import ModelOptionError
from spikeformer.models._features import SpikingFeatures, features_model

T, B = 2, 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(c: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(B, c, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _firing(model: nn.Module) -> nn.Module:
    """An untrained network barely fires: BatchNorms that scale up and shift their outputs make every stage spike,
    differently at each step (so a wrong order of time steps or positions shows)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.fill_(3.0)
                m.bias.fill_(1.0)
    return model


def _capture(model, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of submodule ``name`` in a plain run of the classifier's trunk."""
    out = []
    h = model.get_submodule(name).register_forward_hook(lambda m, a, y: out.append(y))
    try:
        with torch.no_grad():
            model.forward_features_per_step(x)
    finally:
        h.remove()
    return out[0]


def test_token_maps_are_the_tokens_on_their_grid():
    torch.manual_seed(0)
    f = _firing(spikeformer.create_model("spikformer_digits_1_64", T=T, numerics="exact", features_only=True,
                                         feature_time="steps").eval())
    assert f.feature_info.channels() == [32, 64, 64] and f.feature_info.reduction() == [1, 2, 4]
    assert f.feature_info.module_name() == ["patch_embed.proj_lif2", "patch_embed.proj_lif3", "block.0"]
    x = _images(1, 16, 24)  # not square: a swapped H/W cannot pass
    with torch.no_grad():
        steps = f(x)
    assert [tuple(s.shape) for s in steps] == [(T, B, 32, 16, 24), (T, B, 64, 8, 12), (T, B, 64, 4, 6)]
    assert set(steps[0].unique().tolist()) == {0.0, 1.0}  # the stem's LIF spikes
    tokens = _capture(f.model, "block.0", x)  # [T, B, N, C], token n = row * 6 + column
    assert tokens.shape == (T, B, 24, 64)
    assert torch.equal(steps[2][:, :, :, 1, 4], tokens[:, :, 1 * 6 + 4, :]) and tokens.abs().sum() > 0
    assert torch.equal(steps[2].flatten(3).transpose(-1, -2), tokens)
    # the classifier's features are the mean of the last map over the grid
    with torch.no_grad():
        torch.testing.assert_close(steps[2].mean((-2, -1)), f.model.forward_features_per_step(x), rtol=0, atol=1e-6)

    f.feature_time = "mean"
    with torch.no_grad():
        means = f(x)
    assert all(torch.equal(m, s.mean(0)) for m, s in zip(means, steps))


def test_frame_maps_unfold_time_before_batch():
    """The convnet's last stage is a max-pool that sees frames folded as ``[T*B, C, H, W]``."""
    torch.manual_seed(0)
    f = _firing(spikeformer.create_model("spiking_convnet_digits", T=T, numerics="exact", features_only=True,
                                         feature_time="steps").eval())
    assert f.feature_info.module_name() == ["features.1", "features.4", "features.7", "features.8"]
    frames = torch.randint(0, 2, (T, B, 1, 16, 16), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        steps = f(frames)
    before_pool = _capture(f.model, "features.7", frames)  # [T, B, 64, 4, 4]
    assert torch.equal(steps[2], before_pool)
    assert torch.equal(steps[3], F.max_pool2d(before_pool.flatten(0, 1), 2).unflatten(0, (T, B)))
    assert not torch.equal(steps[3][0], steps[3][1])  # the two time steps differ, so their order is checked


def test_sdt_last_map_gives_the_classifier_features_exactly():
    torch.manual_seed(0)
    f = spikeformer.create_model("sdt_cifar_2_256", T=T, numerics="exact", features_only=True,
                                 feature_time="steps").eval()
    assert f.feature_info.module_name() == ["patch_embed.proj_lif2", "patch_embed.proj_bn3", "block.1"]
    x = _images(3, 16, 16)
    with torch.no_grad():
        steps = f(x)
        assert torch.equal(steps[-1].flatten(3).mean(3), f.model.forward_features_per_step(x))
    assert [tuple(s.shape[2:]) for s in steps] == [(128, 16, 16), (256, 8, 8), (256, 4, 4)]


def test_out_indices_select_stages_and_stop_early():
    torch.manual_seed(0)
    full = spikeformer.create_model("spikformer_digits_1_64", T=T, features_only=True).eval()
    x = _images(1, 16, 16)
    with torch.no_grad():
        all_maps = full(x)
    for out_indices, picked in [((0, -1), [0, 2]), (2, [1, 2]), ((1,), [1])]:
        f = features_model(full.model, out_indices=out_indices)
        assert f.out_indices == tuple(picked) and f.feature_info.channels() == [[32, 64, 64][i] for i in picked]
        with torch.no_grad():
            assert all(torch.equal(a, all_maps[i]) for a, i in zip(f(x), picked))

    calls = []
    h = full.model.block[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    with torch.no_grad():
        (stem,) = features_model(full.model, out_indices=(0,))(x)
    h.remove()
    assert calls == [] and torch.equal(stem, all_maps[0])  # nothing after the last selected stage ran

    for bad in [(3,), (2, 1), (0, 0), 4]:
        with pytest.raises(ModelOptionError, match="out_indices"):
            features_model(full.model, out_indices=bad)


def test_features_model_holds_the_trunk_and_trains():
    torch.manual_seed(0)
    f = spikeformer.create_model("spikformer_digits_1_64", T=T, features_only=True)
    assert isinstance(f, SpikingFeatures) and f.T == T and f.default_cfg["input_size"] == (1, 16, 16)
    keys = set(spikeformer.create_model("spikformer_digits_1_64").state_dict())
    assert set(f.state_dict()) == {"model." + k for k in keys if not k.startswith("head.")}
    maps = f.train()(_images(1, 16, 16))
    sum(m.mean() for m in maps).backward()
    assert f.model.patch_embed.proj_conv.weight.grad.abs().sum() > 0


def test_checkpoint_is_loaded_before_wrapping(tmp_path):
    torch.manual_seed(0)
    clf = spikeformer.create_model("spikformer_digits_1_64", T=T).eval()
    path = save_weights(clf, tmp_path / "w.safetensors", {"model": "spikformer_digits_1_64"})
    torch.manual_seed(1)  # other initial weights: only the checkpoint can make the maps agree
    f = spikeformer.create_model("spikformer_digits_1_64", T=T, features_only=True, checkpoint_path=str(path)).eval()
    x = _images(1, 16, 16)
    with torch.no_grad():
        ref = features_model(clf)(x)
        got = f(x)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_errors():
    with pytest.raises(ModelOptionError, match="pass features_only=True"):
        spikeformer.create_model("spikformer_digits_1_64", out_indices=(0,))
    with pytest.raises(TypeError, match="feature_time must be one of"):
        spikeformer.create_model("spikformer_digits_1_64", features_only=True, feature_time="last")
    with pytest.raises(ModelOptionError, match="declares no feature_info"):
        spikeformer.create_model("spikeformer_recon_digits", features_only=True)
