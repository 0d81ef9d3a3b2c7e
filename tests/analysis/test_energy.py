"""Energy / SOPs / firing rates: known answers, the papers' sanity numbers, SpikingJelly 2.0's op_counter."""

import json

import pytest
import torch
from torch import nn

import spikeformer
from spikeformer import SpikeformerError
from spikeformer.analysis import energy_report, get_convention, record_spikes, attention_maps
from spikeformer.neurons import LIF

torch.set_num_threads(1)


class OneLayer(nn.Module):
    """A single synaptic layer on [T, B, ...] spikes (time folded into the batch for the conv)."""

    def __init__(self, layer, T=4):
        super().__init__()
        self.layer, self.T = layer, T

    def forward(self, x):
        if isinstance(self.layer, nn.Conv2d):
            return self.layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self.layer(x)


def half_rate(shape):
    x = torch.zeros(shape).flatten()
    x[::2] = 1
    return x.view(shape)


def calibrate(model, x):
    """BN statistics of one batch, so an untrained model fires at a realistic rate in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize("layer,shape,flops", [
    (nn.Linear(32, 16), (4, 3, 10, 32), 10 * 32 * 16),           # FLOPs per step per sample: N * in * out
    (nn.Conv2d(8, 6, 3, padding=1), (4, 3, 8, 7, 5), 7 * 5 * 9 * 8 * 6),  # h w k^2 c_in c_out
])
def test_known_answers_all_ones_and_half_rate(layer, shape, flops):
    T, B = shape[:2]
    model = OneLayer(layer, T)
    full = energy_report(model, torch.ones(shape), batch_size=B)
    (row,) = full.layers
    assert row.flops == flops and row.steps == T and row.rate == 1.0
    assert full.sops == T * flops and full.macs == 0
    assert full.total_mj == pytest.approx(0.9e-9 * T * flops)
    half = energy_report(model, half_rate(shape), batch_size=B)
    assert half.layers[0].rate == 0.5 and half.sops == T * flops / 2
    # a real-valued input is a MAC at the executed count (T x FLOPs), never an AC
    real = energy_report(model, torch.rand(shape) + 0.1, e_mac=4.6, batch_size=B)
    assert real.sops == 0 and real.macs == T * flops
    assert real.total_mj == pytest.approx(4.6e-9 * T * flops)
    # per sample: the batch size does not change the totals
    one = energy_report(model, torch.ones((T, 1, *shape[2:])), batch_size=1)
    assert one.sops == full.sops


def test_exact_count_leaves_out_the_zero_padding():
    T, B, C, H, W = 2, 1, 3, 6, 5
    model = OneLayer(nn.Conv2d(C, 4, 3, padding=1), T)
    rep = energy_report(model, torch.ones(T, B, C, H, W), convention=get_convention("generic", count="exact"))
    # each output sees only its in-image taps: sum over outputs = (3H-2)(3W-2) per (c_in, c_out) pair
    assert rep.sops == T * C * 4 * (3 * H - 2) * (3 * W - 2)
    assert rep.layers[0].flops == H * W * 9 * C * 4


def test_spike_by_spike_attention_matmuls_are_counted():
    class Attn(nn.Module):
        T = 2

        def forward(self, x):
            q, k = x, half_rate(x.shape)
            return q @ k.transpose(-2, -1)

    T, B, H, N, d = 2, 1, 2, 6, 4
    rep = energy_report(Attn(), torch.ones(T, B, H, N, d), batch_size=B)
    (row,) = rep.layers
    assert row.op == "matmul" and row.inputs == "spike x spike"
    assert row.flops == H * N * N * d
    assert row.sops == 0.5 * T * H * N * N * d  # the sparser operand (rate 0.5) drives the accumulates
    exact = energy_report(Attn(), torch.ones(T, B, H, N, d), convention=get_convention("generic", count="exact"),
                          batch_size=B)
    assert exact.sops == T * H * N * N * d / 2  # coinciding ones: every one of K meets a one in Q

    torch.manual_seed(0)
    model = spikeformer.create_model("spikformer_digits_1_64")
    x = torch.randn(2, 1, 16, 16)
    calibrate(model, x)
    rep = energy_report(model, x)
    mm = [r for r in rep.layers if r.op == "matmul"]
    assert len(mm) == 2 and mm[0].inputs == "spike x spike" and mm[0].sops > 0 and mm[1].sops > 0
    maps = attention_maps(model, x)
    (a,) = maps.values()
    assert a.shape == (4, 2, 4, 16, 16)  # [T, B, heads, N, N]


def test_neuron_firing_rates_per_time_step():
    class Net(nn.Module):
        T = 4

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, bias=False)
            self.lif = LIF(tau=2.0)
            self.step = Heaviside()

        def forward(self, x):
            return self.step(self.lif(self.fc(x)) - 0.5)

    class Heaviside(nn.Module):  # not a BaseNode: found because it turns real input into [T, ...] spikes
        def forward(self, x):
            return (x >= 0).float()

    net = Net()
    with torch.no_grad():
        net.fc.weight.copy_(torch.diag(torch.tensor([1.5, 2.0, 1.0])))
    rep = energy_report(net, torch.ones(4, 2, 3), batch_size=2)
    lif, step = rep.neurons
    # LIF tau=2, threshold 1, hard reset: input 1.5 fires at t=1,3; 2.0 every step; 1.0 never
    assert lif.name == "lif" and lif.T == 4 and lif.neurons == 3
    assert lif.rates == pytest.approx([1 / 3, 2 / 3, 1 / 3, 2 / 3])
    assert lif.spikes == 6
    assert step.name == "step" and step.rates == pytest.approx(lif.rates)
    spikes = record_spikes(net, torch.ones(4, 2, 3), ["lif"])
    assert spikes["lif"].shape == (4, 2, 3)


@pytest.mark.slow
def test_spikformer_224_first_layer_macs_match_the_paper_sanity_numbers():
    # Reference: 4.6 pJ x (224*224*3*9*D/8 x T=4); Spikformer Tab. 2's constant 1.596 mJ is the D=512 term.
    expect = {"spikformer_8_384": (260.1e6, 1.197), "spikformer_8_512": (346.8e6, 1.595),
              "spikformer_8_768": (520.2e6, 2.393)}
    x = torch.rand(1, 3, 224, 224)
    for name, (macs, mj) in expect.items():
        model = spikeformer.create_model(name)
        model.block = nn.ModuleList()  # the transformer blocks do not touch the first layer; skip their cost
        rep = energy_report(model, x, convention="spikformer")
        first = rep.layers[0]
        assert first.name == "patch_embed.proj_conv" and first.inputs == "real"
        assert first.macs == pytest.approx(macs, rel=2e-4)
        assert first.energy_mj == pytest.approx(mj, abs=1e-3)
        assert rep.macs == first.macs  # spikformer convention: every later layer is AC


def _sj_counts(model, x, B):
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    syn = SynOpCounter()
    mac = MACCounter(extra_ignore_modules=[nn.BatchNorm1d, nn.BatchNorm2d])
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        model(x)
    return syn.get_total() / B, mac.get_total() / B


def test_totals_agree_with_spikingjelly_op_counter():
    pytest.importorskip("spikingjelly.activation_based.op_counter")
    torch.manual_seed(0)
    model = spikeformer.create_model("spikformer_digits_1_64", numerics="exact")  # the counter sees aten ops
    x = torch.randn(2, 1, 16, 16)
    calibrate(model, x)
    syn, mac = _sj_counts(model, x, 2)
    exact = energy_report(model, x, convention=get_convention("generic", count="exact"))
    assert exact.sops == pytest.approx(syn, rel=1e-9) and syn > 1e4
    assert exact.macs == pytest.approx(mac, rel=1e-9)  # the first conv on pixels, the SEW sums, the head
    rate = energy_report(model, x)  # generic: fr x T x FLOPs; the same as SpikingJelly on every Linear
    for r_exact, r_rate in zip(exact.layers, rate.layers):
        assert r_rate.macs == r_exact.macs
        if r_rate.op == "linear":
            assert r_rate.sops == pytest.approx(r_exact.sops, rel=1e-9)


def test_spikingresformer_preset_is_0_9_pj_times_sops_without_stem_and_classifier():
    pytest.importorskip("spikingjelly.activation_based.op_counter")
    torch.manual_seed(0)
    model = spikeformer.create_model("spikingresformer_cifar", T=1, numerics="exact")
    x = torch.randn(1, 3, 32, 32)
    calibrate(model, x)
    rep = energy_report(model, x, convention="spikingresformer")
    excluded = [r.name for r in rep.layers if not r.counted]
    assert excluded == ["prologue.0", "classifier"]
    assert rep.macs == 0
    assert rep.total_mj == pytest.approx(0.9e-9 * rep.sops, rel=1e-12)
    # SOPMonitor counts sum(conv(x, ones_like(W))) over spike inputs = SpikingJelly's SynOps; the stem and the
    # classifier see real values, which SpikingJelly does not count either
    syn, _ = _sj_counts(model, x, 1)
    assert rep.sops == pytest.approx(syn, rel=1e-9) and syn > 1e5
    mm = [r for r in rep.layers if r.op == "matmul"]
    assert mm and all("spike" in r.inputs for r in mm)


def test_conventions_and_errors():
    model = OneLayer(nn.Linear(4, 4))
    with pytest.raises(SpikeformerError, match="unknown energy convention"):
        energy_report(model, torch.ones(4, 1, 4), convention="spikformr", batch_size=1)
    with pytest.raises(SpikeformerError):
        get_convention("generic", count="approx")
    assert get_convention("spikingformer") != get_convention("spikformer")


def test_cli_energy_writes_csv_and_json(tmp_path, capsys):
    from spikeformer.cli import main

    assert main(["energy", "--model", "spikformer_digits_1_64", "--samples", "2", "--convention", "sdt",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "patch_embed.proj_conv" in out and "sdt convention" in out
    d = json.loads((tmp_path / "energy_spikformer_digits_1_64_sdt.json").read_text())
    assert d["totals"]["samples"] == 2 and d["totals"]["data"] == "digits"
    assert d["layers"][0]["macs"] == 4 * 16 * 16 * 9 * 8  # T x FLOPs of the first conv (1 -> 8 channels)
    csv = (tmp_path / "energy_spikformer_digits_1_64_sdt.csv").read_text().splitlines()
    assert csv[0].startswith("name,op") and len(csv) == 1 + len(d["layers"])
    assert main(["energy", "--model", "spikformer_digits_1_64", "--samples", "0"]) == 2
