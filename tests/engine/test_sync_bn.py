"""``sync_bn``: the BatchNorm conversion ``spikeformer train`` applies under DDP keeps token models working.

PyTorch's ``SyncBatchNorm.convert_sync_batchnorm`` replaces ``TokenBN`` (channel-last tokens) by a BatchNorm over
dim 1, so a Spikformer fails on its first block; ``spikeformer.engine.distributed.convert_sync_bn`` (used on every
device) keeps the layout, the keys and, without a process group, the outputs."""

import copy

import pytest
import torch
from torch import nn

import spikeformer
from spikeformer.engine import distributed as D
from spikeformer.layers import TokenBN


def test_pytorch_converter_breaks_token_models():
    m = spikeformer.create_model("spikformer_digits_1_64").eval()
    m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
    with pytest.raises(RuntimeError, match="running_mean"):
        m(torch.randn(2, 1, 16, 16))


@pytest.mark.parametrize("train", [False, True])
def test_convert_sync_bn_keeps_token_models(train):
    torch.manual_seed(0)
    ref = spikeformer.create_model("spikformer_digits_1_64").train(train)
    conv = D.convert_sync_bn(copy.deepcopy(ref))
    assert all(isinstance(m, D._GlobalBN) for m in conv.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert any(isinstance(m, TokenBN) for m in conv.modules())
    assert list(conv.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)  # no process group: the module's own forward


def _two_rank_global_bn(rank: int, init: str, x: torch.Tensor, g: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        bn = D.convert_sync_bn(nn.BatchNorm2d(x.shape[1])).train()
        xs = x.chunk(2)[rank].clone().requires_grad_(True)
        y = bn(xs)
        (y * g.chunk(2)[rank]).sum().backward()
        out[rank] = (y.detach(), xs.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var)
    finally:
        D.teardown()


def test_global_bn_two_ranks_equals_one_batchnorm_over_the_global_batch(tmp_path):
    """Two gloo ranks, each with half the batch: outputs, input gradients and running statistics are those of one
    BatchNorm over the whole batch; weight and bias gradients are each rank's share (DDP averages them)."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    x, g = torch.randn(8, 3, 5, 5) * 2 + 1, torch.randn(8, 3, 5, 5)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_two_rank_global_bn, args=(f"file://{tmp_path / 'rendezvous'}", x, g, out), nprocs=2)
        out = dict(out)
    ref = nn.BatchNorm2d(3).train()
    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    (yr * g).sum().backward()
    torch.testing.assert_close(torch.cat([out[0][0], out[1][0]]), yr.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]), xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[0][2] + out[1][2], ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[0][3] + out[1][3], ref.bias.grad, rtol=1e-4, atol=1e-5)
    for r in (0, 1):
        torch.testing.assert_close(out[r][4], ref.running_mean)
        torch.testing.assert_close(out[r][5], ref.running_var)
