"""Integer-valued neurons (I-LIF / MultiSpike / NI-LIF): the official update rules, the straight-through gradient,
the integer-to-binary expansion feeding the next layer the same input, and a digits model trained with them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spikeformer
from spikeformer.errors import SpikeformerError
from spikeformer.neurons import NILIF, IntegerLIF, MultiSpike, expand_integer_spikes, neuron_factory, sum_substeps


def spikeyolo_mem_update(x, D=4, decay=0.25):
    """SpikeYOLO's ``mem_update`` written out: mem[0] = x[0]; mem[t] = (mem[t-1] - spike[t-1]) * decay + x[t]."""
    out, mem, spike = [], None, None
    for t in range(x.shape[0]):
        mem = x[t] if mem is None else (mem - spike) * decay + x[t]
        spike = torch.round(torch.clamp(mem, 0, D))
        out.append(spike)
    return torch.stack(out)


def test_ilif_follows_spikeyolo_and_the_sj_tau_spelling():
    x = torch.randn(6, 3, 50) * 3
    ref = spikeyolo_mem_update(x)
    assert torch.equal(IntegerLIF(D=4, decay=0.25)(x), ref)
    assert torch.equal(IntegerLIF(D=4, tau=4 / 3)(x), ref)  # SpikingJelly's ILIFNode: decay = 1 - 1/tau
    assert set(ref.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0} and ref.max() == 4


def test_threshold_scales_the_count_and_reset():
    x = torch.randn(5, 40) * 2
    n = IntegerLIF(D=3, decay=0.5, v_threshold=0.5)
    assert torch.equal(n(x), spikeyolo_mem_update(x / 0.5, D=3, decay=0.5))


def test_multispike_and_nilif_are_stateless_quantisers():
    x = torch.tensor([[-1.0, 0.4, 0.6, 2.5, 3.49, 7.0]])
    assert MultiSpike(D=4)(x).tolist() == [[0.0, 0.0, 1.0, 2.0, 3.0, 4.0]]
    assert NILIF(D=4)(x).tolist() == [[0.0, 0.0, 0.25, 0.5, 0.75, 1.0]]


def test_straight_through_gradient_inside_zero_to_d():
    x = torch.tensor([[-0.5, 0.0, 1.3, 4.0, 4.2]], requires_grad=True)
    MultiSpike(D=4)(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]
    # I-LIF: gradient flows through the membrane (decay per step), the reset is detached
    x = torch.tensor([[1.2], [0.3]], requires_grad=True)
    IntegerLIF(D=4, decay=0.25)(x)[1].sum().backward()
    assert x.grad.flatten().tolist() == [0.25, 1.0]


def test_expansion_gives_the_next_layer_the_same_input():
    torch.manual_seed(0)
    counts = IntegerLIF(D=4)(torch.randn(3, 2, 8, 6, 6) * 3)  # [T, B, C, H, W]
    binary = expand_integer_spikes(counts, 4)
    assert binary.shape == (12, 2, 8, 6, 6) and set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sum_substeps(binary, 4), counts)
    assert torch.equal(binary[1], (counts[0] >= 2).float())  # sub-step j of step t fires when j < count[t]
    w = torch.randint(-3, 4, (5, 8, 3, 3)).float()  # integer weights: every sum exact
    conv_int = F.conv2d(counts.flatten(0, 1), w, padding=1).unflatten(0, (3, 2))
    conv_bin = F.conv2d(binary.flatten(0, 1), w, padding=1).unflatten(0, (12, 2))
    assert torch.equal(sum_substeps(conv_bin, 4), conv_int)
    with pytest.raises(SpikeformerError, match="integer counts"):
        expand_integer_spikes(NILIF(D=4)(torch.randn(2, 5) * 3) + 0.1, 4)


def test_models_take_the_integer_neurons_by_name():
    m = spikeformer.create_model("spikformer_digits_1_64", neuron={"type": "ilif", "D": 2})
    neurons = [x for x in m.modules() if isinstance(x, IntegerLIF)]
    assert neurons and all(n.D == 2 and n.decay == 0.25 for n in neurons)
    assert isinstance(neuron_factory("nilif")(), NILIF)
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.slow
def test_digits_model_with_integer_neurons_trains(tmp_path):
    from spikeformer.engine import build_config, train

    # T=2 (the model's default is 4): 98.9 % in 33 s with one thread beside another job (T=4: 112 s in the suite)
    cfg = build_config(None, ["model_kwargs.neuron=ilif", "T=2", "epochs=8", "report=false"], out=str(tmp_path / "run"))
    result = train(cfg, progress=False)
    assert result["top1"] >= 97.0
