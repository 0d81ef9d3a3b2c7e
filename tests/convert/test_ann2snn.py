"""ANN-to-SNN conversion: the QCFS activation, the converted IF neuron and the streaming simulation."""

import gc

import pytest
import torch
from torch import nn

from spikeformer.convert import QCFS, ScaledIF, ann_to_snn, iter_simulate, replace_activations, simulate
from spikeformer.convert.ann2snn import accuracy_over_time, ann_variant, time_points
from spikeformer.errors import SpikeformerError


# ------------------------------------------------------------------------------------------------------------ QCFS
def test_qcfs_forward_values():
    q = QCFS(levels=4, threshold=2.0)
    x = torch.tensor([-1.0, 0.2, 0.25, 1.0, 1.9, 3.0])
    # x/up*L + 0.5 = -1.5, 0.9, 1.0, 2.5, 4.3, 6.5 -> floor/L -> clamp [0, 1] -> * up
    assert q(x).tolist() == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
    assert q.up.shape == (1,) and q.up.item() == 2.0 and q.up.requires_grad


def test_qcfs_straight_through_gradients():
    L, up = 16, 1.5
    q = QCFS(levels=L, threshold=up)
    x = torch.tensor([-0.5, -0.01, 0.3, 0.77, 1.2, 1.49, 2.5], requires_grad=True)
    q(x).sum().backward()
    z = torch.floor(x.detach() / up * L + 0.5) / L  # before the clamp
    inside = (z >= 0) & (z <= 1)  # bounds included, as torch.clamp in the official code's PyTorch 1.12
    # the floor passes the gradient unchanged: dy/dx = 1 wherever the clamp is not active
    assert torch.equal(x.grad, inside.float())
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # level 0 (-0.01) and level L (1.49) learn
    # dy/dup = z - x/up inside, 1 above the top
    expect = torch.where(inside, z - x.detach() / up, (z > 1).float()).sum()
    assert q.up.grad.item() == pytest.approx(expect.item(), abs=1e-6)


def test_qcfs_rejects_bad_settings():
    with pytest.raises(SpikeformerError, match="levels"):
        QCFS(levels=0)
    with pytest.raises(SpikeformerError, match="threshold"):
        QCFS(threshold=-1.0)


def test_replace_activations_on_any_ann():
    ann = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3))
    replace_activations(ann, levels=8, threshold=3.0)
    qs = [m for m in ann.modules() if isinstance(m, QCFS)]
    assert len(qs) == 2 and all(q.levels == 8 and q.up.item() == 3.0 for q in qs)
    assert not any(isinstance(m, nn.ReLU) for m in ann.modules())
    assert sum(p.numel() for p in ann.parameters()) == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3) + 2
    with pytest.raises(SpikeformerError, match="no nn.ReLU"):
        replace_activations(nn.Sequential(nn.Linear(2, 2)))


# ------------------------------------------------------------------------------------------------ the IF neuron
def _run(neuron: ScaledIF, x: torch.Tensor, steps: int) -> torch.Tensor:
    neuron.reset()
    out = torch.stack([neuron(x) for _ in range(steps)])
    neuron.reset()
    return out


def test_membrane_precharged_to_half_threshold():
    n = ScaledIF(scale=2.0)
    # x / scale = 0.5: 0.5 pre-charge + 0.5 reaches the threshold at the first step, then every second step
    assert _run(n, torch.tensor([1.0]), 6).flatten().tolist() == [2.0, 0.0, 2.0, 0.0, 2.0, 0.0]
    # x / scale = 0.125: the first spike after 4 steps (0.5 + 4 * 0.125 = 1), not 8 as from rest
    out = _run(n, torch.tensor([0.25]), 12).flatten()
    assert out.nonzero().flatten().tolist() == [3, 11]
    # outputs are spikes scaled by the QCFS threshold
    assert set(out.tolist()) <= {0.0, 2.0}


def test_soft_reset_over_many_steps():
    """Soft reset keeps the residue: after n steps of input a (on x/up) the count is floor(n a + 1/2) exactly."""
    steps = 1000
    a = torch.arange(0, 65, dtype=torch.float32) / 64  # dyadic: no rounding in the membrane
    spikes = _run(ScaledIF(scale=1.0), a, steps)
    counts = spikes.cumsum(0)
    n = torch.arange(1, steps + 1, dtype=torch.float64)[:, None]
    assert torch.equal(counts.double(), torch.floor(n * a.double()[None] + 0.5))
    # a hard reset would lose the residue above the threshold: a = 0.75 fires 500, not 750, times
    assert counts[-1, 48].item() == 750


def test_converted_neuron_reproduces_qcfs_after_levels_steps():
    L, up = 16, 2.0
    x = torch.linspace(-1, 3, 129)  # multiples of 1/32: exact on x/up * L
    q = QCFS(L, up)
    rate = _run(ScaledIF(up), x, L).mean(0)
    assert torch.equal(rate, q(x).detach())


def test_ann_to_snn_replaces_and_converges():
    torch.manual_seed(0)
    ann = replace_activations(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                                            nn.Linear(16, 4)), levels=16, threshold=1.0)
    snn = ann_to_snn(ann)
    assert snn is not ann and any(isinstance(m, QCFS) for m in ann.modules())
    scales = [m.scale for m in snn.modules() if isinstance(m, ScaledIF)]
    assert scales == [1.0, 1.0]
    x = torch.randn(32, 6)
    with torch.no_grad():
        target = nn.Sequential(ann[0], nn.Hardtanh(0, 1), ann[2], nn.Hardtanh(0, 1), ann[4])(x)
    out = simulate(snn, x, 256)
    assert out.shape == (256, 32, 4)
    err = [(out[:t].mean(0) - target).abs().mean().item() for t in (4, 16, 64, 256)]
    # the rate approaches clip(x, 0, up) (the unquantised activation): the error falls about 4x per 4x steps
    assert all(a > 3 * b for a, b in zip(err, err[1:])) and err[-1] < 1e-3
    with pytest.raises(SpikeformerError, match="no QCFS or ReLU"):
        ann_to_snn(nn.Sequential(nn.Linear(2, 2)))


def test_simulate_needs_converted_network_and_positive_steps():
    with pytest.raises(SpikeformerError, match="ann_to_snn"):
        simulate(nn.Linear(2, 2), torch.zeros(1, 2), 4)
    snn = ann_to_snn(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(SpikeformerError, match="positive integer"):
        simulate(snn, torch.zeros(1, 2), 0)


def _live_tensor_bytes() -> tuple[int, int]:
    gc.collect()
    seen, total = set(), 0
    for o in gc.get_objects():
        if type(o) is torch.Tensor:
            s = o.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
    return len(seen), total


def test_simulation_memory_is_flat_in_steps():
    """Streaming: the membranes are the only state; nothing from earlier steps is kept."""
    torch.manual_seed(0)
    ann = replace_activations(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                            nn.Linear(256, 10)))
    snn = ann_to_snn(ann)
    x = torch.randn(8, 64)
    held = {}
    for t, out in enumerate(iter_simulate(snn, x, 120), 1):
        assert out.grad_fn is None
        del out
        if t in (5, 40, 120):
            held[t] = _live_tensor_bytes()
    assert held[5] == held[40] == held[120]
    assert [m.state for m in snn.modules() if isinstance(m, ScaledIF)] == [None, None]  # cleared at the end


def test_accuracy_over_time_and_points():
    per_step = torch.tensor([[[1.0, 0.0]], [[0.0, 3.0]], [[0.0, 0.0]]])  # [3 steps, 1 sample, 2 classes]
    assert accuracy_over_time(per_step, torch.tensor([1])).tolist() == [0, 1, 1]
    assert time_points(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert time_points(100) == [1, 2, 4, 8, 16, 32, 64, 100]


# ---------------------------------------------------------------------------------------- the conv baseline's ANN
def test_conv_baseline_ann_variant_converts():
    ann = ann_variant("spiking_convnet_digits").eval()
    assert ann.T == 1
    assert not any(isinstance(m, nn.MaxPool2d) for m in ann.modules())
    assert sum(isinstance(m, QCFS) for m in ann.modules()) == 7  # six conv blocks and the hidden FC
    x = torch.randn(3, 1, 16, 16)
    snn = ann_to_snn(ann)
    out = simulate(snn, x, 8)
    assert out.shape == (8, 3, 10)
    with pytest.raises(SpikeformerError, match="no ANN variant"):
        ann_variant("mst_digits")
