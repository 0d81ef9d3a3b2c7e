"""The trainer's optimizers: PyTorch's fused step where every parameter allows it, the same update as the loop."""

import pytest
import torch

from spikeformer import create_model
from spikeformer.engine.config import DEFAULTS
from spikeformer.engine.train import build_optimizer


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_fused_step_is_the_loop_update(name):
    torch.manual_seed(0)
    model = create_model("spikformer_digits_1_64", T=2)
    twin = create_model("spikformer_digits_1_64", T=2)
    twin.load_state_dict(model.state_dict())
    cfg = {**DEFAULTS, "optimizer": name, "lr": 1e-2, "weight_decay": 0.05}
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"] is True
    ref = type(opt)(_groups_like(opt, model, twin), foreach=False)  # the loop, PyTorch's CPU default
    start = [p.detach().clone() for p in model.parameters()]
    # the same gradients for both (a forward pass would let rounding flip spikes and change the next gradients)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    moved = [not torch.equal(p, q) for p, q in zip(model.parameters(), start)]
    assert all(moved)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def _groups_like(opt, model, twin):
    index = {id(p): q for p, q in zip(model.parameters(), twin.parameters())}
    groups = []
    for g in opt.param_groups:
        kw = {k: v for k, v in g.items() if k not in ("params", "fused", "foreach")}
        groups.append({**kw, "params": [index[id(p)] for p in g["params"]]})
    return groups


def test_not_fused_where_a_parameter_cannot_be():
    model = torch.nn.Linear(4, 2)
    model.extra = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    opt = build_optimizer(model, {**DEFAULTS, "optimizer": "adamw"})
    assert not opt.defaults["fused"]
