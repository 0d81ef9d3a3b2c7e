"""The compiled spike attention's two kinds of products: a product with a sparse spike operand adds only the rows
its nonzeros pick (``listed``), in the dense product's order, so both give the same bits, forward and backward."""

import pytest
import torch

from spikeformer.kernels.cpu import attention as A
from spikeformer.kernels.cpu import build

pytestmark = pytest.mark.skipif(not build.available(), reason="no C++ compiler")


def _operands(shape, density, seed, real):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < density
    vals = torch.randn(shape, generator=g) if real else torch.ones(shape)
    return torch.where(mask, vals, torch.zeros(()))


@pytest.mark.parametrize("N,C,H", [(17, 64, 4), (33, 128, 4), (5, 256, 4), (9, 96, 6)], ids=lambda v: str(v))
@pytest.mark.parametrize("density", [0.0, 0.03, 0.3, 1.0])
@pytest.mark.parametrize("real", [False, True], ids=["spikes", "real"])
def test_listed_products_equal_dense_bit_for_bit(N, C, H, density, real):
    # head dims 16, 32, 64 and 16; N below and above the head dim and not a multiple of 8
    q, k, v = (_operands((2, 3, N, C), density, s, real) for s in range(3))
    go = torch.randn(2, 3, N, C, generator=torch.Generator().manual_seed(7))
    res = {}
    for products in ("dense", "listed", "auto"):
        out = A.attention_forward(q, k, v, H, 0.125, products)
        res[products] = (out, *A.attention_backward(go, q, k, v, H, 0.125, products))
    for products in ("listed", "auto"):
        for a, b in zip(res[products], res["dense"]):
            assert torch.equal(a, b), products
    # and the values are those of the attention (float64 reference, per head)
    d = C // H
    ref = torch.cat([(q[..., h * d:(h + 1) * d].double() @ k[..., h * d:(h + 1) * d].double().transpose(-1, -2))
                     @ v[..., h * d:(h + 1) * d].double() for h in range(H)], -1) * 0.125
    tol = 1e-5 * max(ref.abs().max().item(), 1.0)
    assert (res["dense"][0].double() - ref).abs().max().item() <= tol
    if not real:
        assert torch.equal(res["dense"][0], ref.float())  # spikes: exact integers / 8

