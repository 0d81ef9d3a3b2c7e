"""What a multi-GPU (NCCL) run sets up, checked without a GPU: CUDA is mocked and the calls into torch recorded."""

import torch
from torch import nn

from spikeformer.engine import distributed as D


def test_setup_binds_each_rank_to_its_gpu_with_nccl(monkeypatch):
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: calls.setdefault("init", kw))
    info = D.setup("auto")
    assert info.device == torch.device("cuda", 1) and info.rank == 1 and info.world == 2
    assert calls["set_device"] == torch.device("cuda", 1)
    assert calls["init"] == {"backend": "nccl", "device_id": torch.device("cuda", 1)}
    assert D.loader_options(info) == {"pin_memory": True}


def test_cpu_ranks_use_gloo_and_unpinned_memory(monkeypatch):
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: calls.setdefault("init", kw))
    info = D.setup("auto")
    assert info.device == torch.device("cpu")
    assert calls["init"] == {"backend": "gloo"}
    assert D.loader_options(info) == {"pin_memory": False}
    x = torch.ones(2)
    assert D.to_device(x, info) is x  # already on the device: no copy


def test_ddp_is_given_the_rank_gpu(monkeypatch):
    seen = {}

    class FakeDDP(nn.Module):
        def __init__(self, module, device_ids=None):
            super().__init__()
            seen["device_ids"] = device_ids
            self.module = module

    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", FakeDDP)
    model = nn.Linear(2, 2)
    assert D.wrap_ddp(model, D.DistInfo(0, 1, 0, torch.device("cpu"))) is model  # one process: no wrapper
    D.wrap_ddp(model, D.DistInfo(1, 2, 1, torch.device("cuda", 1)))
    assert seen["device_ids"] == [1]
    D.wrap_ddp(model, D.DistInfo(1, 2, 0, torch.device("cpu")))
    assert seen["device_ids"] is None
