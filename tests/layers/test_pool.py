"""The compiled channels-last max-pool (layers/pool.py) against PyTorch's, bit for bit."""

import pytest
import torch

from spikeformer.layers.pool import _covered, max_pool
from spikeformer.neurons import _native

pytestmark = pytest.mark.skipif(_native.library() is None, reason=f"no compiled kernel: {_native.build_error()}")

POOL = torch.nn.MaxPool2d(3, 2, 1)


def _frames(kind, shape, dtype, gen):
    if kind == "spikes":
        x = (torch.rand(shape, generator=gen) < 0.2).float()
    elif kind == "ties":  # many equal maxima per window: the first in window order must win
        x = torch.randint(0, 3, shape, generator=gen).float()
    elif kind == "all-zero":
        x = torch.zeros(shape)
    else:
        x = torch.randn(shape, generator=gen)
        x.view(-1)[:: 97] = float("-inf")
        x.view(-1)[5:: 131] = float("nan")
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["spikes", "ties", "all-zero", "randn-inf-nan"])
@pytest.mark.parametrize("shape", [(3, 5, 9, 9), (2, 16, 8, 8), (4, 7, 6, 11), (1, 3, 1, 1), (8, 64, 16, 16)])
def test_forward_and_gradients_equal_pytorch(dtype, kind, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = _frames(kind, shape, dtype, gen)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert _covered(POOL, a)
    ya, yb = max_pool(POOL, a), POOL(b)
    assert ya.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ya, yb, atol=0, rtol=0, equal_nan=True)
    # large gradients so that sums over overlapping windows round in bf16: the order must be PyTorch's
    g = (torch.randn(ya.shape, generator=gen) * 100).to(dtype).contiguous(memory_format=torch.channels_last)
    (ga,), (gb,) = torch.autograd.grad(ya, a, g), torch.autograd.grad(yb, b, g)
    assert ga.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ga, gb)


def test_gradient_arrives_in_another_layout():
    x = _frames("spikes", (4, 8, 10, 10), torch.float32, torch.Generator().manual_seed(0)).requires_grad_()
    y = max_pool(POOL, x)
    g = torch.randn(y.shape)  # NCHW gradient
    (ga,) = torch.autograd.grad(y, x, g)
    (gb,) = torch.autograd.grad(POOL(x), x, g)
    assert torch.equal(ga, gb)


def test_uncovered_calls_take_pytorch():
    x = torch.randn(2, 4, 8, 8)
    assert not _covered(POOL, x)  # NCHW
    assert not _covered(torch.nn.MaxPool2d(2, 2), x.contiguous(memory_format=torch.channels_last))
    assert not _covered(POOL, x.double().contiguous(memory_format=torch.channels_last))
    assert torch.equal(max_pool(POOL, x), POOL(x))


def test_no_grad_forward_equals_pytorch():
    x = _frames("spikes", (6, 12, 16, 16), torch.bfloat16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(max_pool(POOL, x), POOL(x))
