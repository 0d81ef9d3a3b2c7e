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
