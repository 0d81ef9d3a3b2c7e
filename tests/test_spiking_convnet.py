"""The conv-SNN baseline: parameter counts, SpikingJelly equivalence, its recipe file, and training on digits."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import spikeformer
from spikeformer.neurons import IF, ATan

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def convnet_params(in_chans, widths, hidden, img_size, num_classes=10):
    """Conv3x3 (no bias) + BN (2 per channel) for the six ConvBlocks; Linear(C*(s/8)^2, hidden) and
    Linear(hidden, classes) with bias."""
    total, c = 0, in_chans
    for w in widths:
        total += c * w * 9 + 2 * w + w * w * 9 + 2 * w
        c = w
    feats = c * (img_size // 8) ** 2
    return total + feats * hidden + hidden + hidden * num_classes + num_classes


def test_param_counts():
    # CIFAR-10: convs 3,456 + 147,456 + 294,912 + 589,824 + 1,179,648 + 2,359,296 = 4,574,592; BN 2*1,792 = 3,584;
    # Linear(8192, 1024) 8,389,632; Linear(1024, 10) 10,250 -> 12,978,058.
    m = spikeformer.create_model("spiking_convnet_cifar10")
    assert n_params(m) == convnet_params(3, (128, 256, 512), 1024, 32) == 12_978_058
    # digits (1x16x16, widths 16-32-64, 2x2 maps): convs 71,568; BN 448; Linear(256, 128) 32,896; head 1,290.
    d = spikeformer.create_model("spiking_convnet_digits")
    assert n_params(d) == convnet_params(1, (16, 32, 64), 128, 16) == 106_202


def test_neurons_are_if_with_atan():
    m = spikeformer.create_model("spiking_convnet_cifar10")
    neurons = [mod for mod in m.modules() if isinstance(mod, IF)]
    assert len(neurons) == 7  # six ConvBlocks + the hidden FC layer
    assert all(n.surrogate == ATan(2.0) and n.v_threshold == 1.0 and n.v_reset == 0.0 for n in neurons)
    assert m.T == 4


@pytest.mark.parametrize("name,shape", [("spiking_convnet_cifar10", (2, 3, 32, 32)),
                                        ("spiking_convnet_digits", (2, 1, 16, 16))])
def test_forward_backward(name, shape):
    torch.manual_seed(0)
    m = spikeformer.create_model(name)
    x = torch.randn(shape)
    y = m(x)
    assert y.shape == (2, 10)
    # output = mean over T of the per-step logits of the hidden spikes
    feats = m.forward_features(x)
    assert feats.shape[0] == 4 and set(feats.unique().tolist()) <= {0.0, 1.0}
    F.cross_entropy(y, torch.tensor([1, 2])).backward()
    assert m.features[0].conv.weight.grad.abs().sum() > 0
    assert m.fc1.weight.grad.abs().sum() > 0


def test_matches_spikingjelly_network():
    """The same network written with SpikingJelly 2.0 layers (the numerical oracle) gives the same logits and
    input gradients after copying the weights."""
    pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def block(i, o):
        return [layer.Conv2d(i, o, 3, padding=1, bias=False), layer.BatchNorm2d(o),
                neuron.IFNode(surrogate_function=surrogate.ATan())]

    ref = torch.nn.Sequential(
        *block(1, 16), *block(16, 16), layer.MaxPool2d(2), *block(16, 32), *block(32, 32), layer.MaxPool2d(2),
        *block(32, 64), *block(64, 64), layer.MaxPool2d(2), layer.Flatten(), layer.Linear(256, 128),
        neuron.IFNode(surrogate_function=surrogate.ATan()), layer.Linear(128, 10),
    )
    functional.set_step_mode(ref, "m")
    torch.manual_seed(0)
    ours = spikeformer.create_model("spiking_convnet_digits")
    src, dst = list(ours.state_dict().values()), ref.state_dict()
    assert len(src) == len(dst)
    ref.load_state_dict({k: v.clone() for k, v in zip(dst, src)})
    x = torch.randn(3, 1, 16, 16) * 2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = ours(xa)
    yb = ref(xb.unsqueeze(0).repeat(4, 1, 1, 1, 1)).mean(0)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert xa.grad.abs().sum() > 0
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)


def test_recipe_config():
    conf = yaml.safe_load((ROOT / "configs" / "spiking_convnet_cifar10.yaml").read_text())
    assert {"model", "data", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "sched", "warmup_epochs",
            "label_smoothing", "T"} <= set(conf)
    assert conf["model"] == "spiking_convnet_cifar10" and conf["data"] == "cifar10"
    assert (conf["optimizer"], conf["lr"], conf["sched"], conf["batch_size"], conf["T"]) == ("adam", 1e-3, "cosine",
                                                                                             128, 4)
    assert isinstance(conf["lr"], float)
    assert spikeformer.create_model(conf["model"], T=conf["T"]).T == 4


@pytest.mark.slow
def test_digits_training_reaches_accuracy():
    """Two epochs of Adam (3e-3, cosine per step, batch 32) on the embedded digits. Measured: 95.3 / 96.4 / 95.3 %
    test accuracy for seeds 0 / 1 / 2 (about 20-30 s on one shared core); the bar sits well below."""
    from torch.utils.data import DataLoader

    from spikeformer.data import build_dataset

    torch.manual_seed(0)
    train, test = build_dataset("digits", "train"), build_dataset("digits", "test")
    model = spikeformer.create_model("spiking_convnet_digits")
    epochs, bs = 2, 32
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((len(train) + bs - 1) // bs))
    loader = DataLoader(train, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.90, f"digits test accuracy {acc:.3f}"
