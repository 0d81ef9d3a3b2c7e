"""Run under torchrun by tests/test_distributed.py: trains, and after every optimizer step checks that all ranks hold
identical weights (the largest difference seen is written to OUT/ddp_weight_diffs.json by rank 0)."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_post_hook

from spikeformer.engine import build_config, train

diffs = []


def check_ranks_agree(opt, args, kwargs):
    flat = torch.cat([p.detach().reshape(-1) for g in opt.param_groups for p in g["params"]])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    diffs.append(max((g - gathered[0]).abs().max().item() for g in gathered))


register_optimizer_step_post_hook(check_ranks_agree)
out = Path(sys.argv[1])
result = train(build_config(None, sys.argv[2:], out=str(out)), progress=False)
if os.environ.get("RANK") == "0":
    (out / "ddp_weight_diffs.json").write_text(json.dumps({"diffs": diffs, "result": result}))
