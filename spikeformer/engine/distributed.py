"""torchrun / DDP support: process-group set-up from the environment, sharding, metric reduction, sync BN.

``torchrun --nproc_per_node N -m spikeformer train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; we read them (no
``--local_rank`` argument), use NCCL on GPUs and gloo on CPU, and let only rank 0 write files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..layers import TokenBN


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_pref: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if device_pref == "cuda" and not torch.cuda.is_available():
        from ..errors import SpikeformerError

        raise SpikeformerError("device=cuda was requested but no CUDA GPU is visible; use --set device=cpu")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        # binding the rank's GPU up front lets NCCL set up its communicator on the right device
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", **({"device_id": device} if use_cuda else {}))
    return DistInfo(rank, world, local, device)


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` under DistributedDataParallel when several processes train (its rank's GPU named on CUDA)."""
    if not info.enabled:
        return model
    cuda = info.device.type == "cuda"
    return nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if cuda else None)


def loader_options(info: DistInfo) -> dict:
    """DataLoader settings for the training device: pinned host memory when batches go to a GPU."""
    return {"pin_memory": info.device.type == "cuda"}


def to_device(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """A batch tensor on the training device; from pinned memory the copy to a GPU overlaps with compute."""
    return t.to(info.device, non_blocking=info.device.type == "cuda")


def teardown(clean: bool = True) -> None:
    """Leave the process group. ``clean`` (the run ended without an error): first a barrier, so that every rank's
    earlier collectives are finished and gloo's worker threads have released them while this thread still runs
    Python (see :func:`all_reduce_sum`); after an error the barrier is skipped, since the other ranks may never reach
    it."""
    if dist.is_available() and dist.is_initialized():
        if clean:  # NCCL's barrier must be told the rank's GPU, or it guesses one
            nccl = dist.get_backend() == "nccl"
            dist.barrier(**({"device_ids": [torch.cuda.current_device()]} if nccl else {}))
        dist.destroy_process_group()
        _pinned.clear()


def shard_order(n: int, seed: int, epoch: int, info: DistInfo, shuffle: bool, batch_size: int) -> list[int]:
    """This rank's sample order for one epoch: a permutation seeded by (seed, epoch), cut to whole global batches,
    then interleaved across ranks so that the ranks' k-th batches together are the single-process k-th batch."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        order = order[: (n // batch_size) * batch_size]  # drop_last over the global batch
    else:
        order = list(range(n))
    return order[info.rank :: info.world]


# The tensor of the latest all_reduce_sum, kept referenced from Python. gloo's worker thread drops its own reference
# to a collective's tensor only after the caller's wait() has returned. If Python had already dropped the tensor,
# that late drop frees it on the worker thread, which then needs the GIL; when a rank returns from its last
# collective straight into interpreter shutdown, the worker cannot get the GIL and the process aborts with
# "terminate called without an active exception" (seen under torchrun on CPU in about one run in ten). Keeping the
# reference here means the worker's drop is a plain decrement.
_pinned: list[torch.Tensor] = []


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    _pinned[:] = [t]  # the previous call's tensor is released here, long after its collective ended
    return t.tolist()


class _AllReduce(torch.autograd.Function):
    """Sum over ranks; the gradient is summed over ranks too (each rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class _GlobalBN:
    """Batch statistics over the whole global batch (all ranks), differentiably; a mixin swapped into BN layers.

    PyTorch's SyncBatchNorm refuses CPU tensors, so gloo runs need this; the state_dict keys stay those of the
    original BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]) if isinstance(self, TokenBN) else x
        c = x2.shape[1]
        dims = [d for d in range(x2.dim()) if d != 1]
        n_local = x2.numel() // c
        xs = x2.float()  # statistics in fp32 under autocast (an fp16 square overflows above 256); no copy for fp32
        stats = torch.cat([xs.sum(dims), (xs * xs).sum(dims), xs.new_tensor([float(n_local)])])
        stats = _AllReduce.apply(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
                self.num_batches_tracked.add_(1)
        view = [1, c] + [1] * (x2.dim() - 2)
        y = (xs - mean.view(view)) * torch.rsqrt(var.view(view) + self.eps)
        if self.affine:
            y = y * self.weight.view(view) + self.bias.view(view)
        return y.to(x.dtype).reshape(shape)


_GLOBAL_CLASSES: dict[type, type] = {}


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Make every BatchNorm of ``model`` use global-batch statistics under DDP (in place; keys unchanged)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _GlobalBN):
            cls = type(m)
            if cls not in _GLOBAL_CLASSES:
                _GLOBAL_CLASSES[cls] = type(f"Global{cls.__name__}", (_GlobalBN, cls), {})
            m.__class__ = _GLOBAL_CLASSES[cls]
    return model
