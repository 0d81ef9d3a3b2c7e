"""Import cost: ``import spikeformer`` does not import timm/torchvision, yet timm sees every model afterwards."""

import json
import subprocess
import sys

import pytest
import torch


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_does_not_load_timm_or_torchvision():
    code = "import sys, spikeformer; print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))"
    assert _run(code) == "[]"


@pytest.mark.parametrize("order", ["spikeformer first", "timm first"])
def test_timm_sees_every_model_in_either_import_order(order):
    imports = "import spikeformer, timm" if order == "spikeformer first" else "import timm, spikeformer"
    code = (f"{imports}\n"
            "import json\n"
            "names = spikeformer.list_models()\n"
            "m = timm.create_model('spikformer_cifar_4_256', num_classes=7)\n"
            "print(json.dumps([len(names), [n for n in names if not timm.is_model(n)], m.head.out_features]))")
    n, missing, classes = json.loads(_run(code))
    assert n > 30 and missing == [] and classes == 7


@pytest.mark.parametrize("shape,std,a,b", [((300, 200), 0.02, -2.0, 2.0), ((64, 3, 7, 7), 1.0, -0.5, 1.5)])
def test_trunc_normal_draws_what_timm_draws(shape, std, a, b):
    from timm.layers import trunc_normal_ as timm_trunc_normal_

    from spikeformer.layers.init import trunc_normal_

    ours, theirs = torch.empty(shape), torch.empty(shape)
    torch.manual_seed(11)
    trunc_normal_(ours, std=std, a=a, b=b)
    torch.manual_seed(11)
    timm_trunc_normal_(theirs, std=std, a=a, b=b)
    assert torch.equal(ours, theirs)
    assert ours.min() >= a and ours.max() <= b
