"""NIR export/import: the node mapping, bit-equal round trips, the error naming the first layer NIR cannot express,
the CLI, and Norse (an independent NIR consumer) giving the same spikes and logits on the same input."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("nir", reason="NIR export needs the 'nir' package (pip install 'spikeformer[nir]')")
import nir  # noqa: E402

from spikeformer.convert.nir import NIRExportError, export_nir, read_nir, write_nir  # noqa: E402
from spikeformer.errors import SpikeformerError  # noqa: E402
from spikeformer.layers import seq_apply  # noqa: E402
from spikeformer.models import create_model  # noqa: E402
from spikeformer.neurons import IF, LIF, PLIF, BaseNode  # noqa: E402

VTH = 1.0 + 2.0**-14  # off every grid the dyadic membranes below can reach, so no neuron ever ties with it


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dyadic_(model, seed=0, gain=0):
    """Weights, BatchNorm statistics and thresholds on dyadic grids (official-models.md §8 item 9): every float32
    operation is exact, so any faithful order of operations (folded BatchNorm, another simulator) gives the same
    membranes, spikes and logits bit for bit. ``gain`` doubles BatchNorm scales and linear weights per step (LIF
    halves its input, tau=2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                step = 2.0**-5
                k = max(1, round((3.0 / m.weight[0].numel()) ** 0.5 / step))
                scale = 2.0**gain if isinstance(m, nn.Linear) else 1.0
                m.weight.copy_(torch.randint(-k, k + 1, m.weight.shape, generator=g) * step * scale)
                if m.bias is not None:
                    m.bias.copy_(torch.randint(-4, 5, m.bias.shape, generator=g) * 2.0**-6)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.eps = 0.0
                m.running_var.fill_(1.0)
                m.running_mean.copy_(torch.randint(-4, 5, m.running_mean.shape, generator=g) * 2.0**-6)
                m.weight.copy_(2.0 ** torch.randint(-1 + gain, 2 + gain, m.weight.shape, generator=g).float())
                m.bias.copy_(torch.randint(0, 17, m.bias.shape, generator=g) * 2.0 ** (-5 + gain))
            elif isinstance(m, BaseNode):
                m.v_threshold = VTH
    return model.eval()


def images(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 9, (n, 1, 16, 16), generator=g).float() / 8  # a 1/8 grid


def convnet(neuron="if", numerics="fast"):
    torch.manual_seed(0)
    m = create_model("spiking_convnet_digits", neuron=neuron, numerics=numerics)
    return dyadic_(m, gain=2 if neuron == "lif" else 0)


def hidden_spikes(net, x):
    """The fc1 neuron's spikes ``[T, B, 128]`` and the per-step output of a :class:`NIRNetwork`."""
    cap = {}
    h = net.layers[net.keys["fc1_neuron"]].register_forward_hook(lambda _m, _i, o: cap.__setitem__("s", o))
    try:
        with torch.no_grad():
            y = net(x)
    finally:
        h.remove()
    return cap["s"], y


# -- the graph --------------------------------------------------------------------------------------------------------
def test_convnet_graph_nodes_and_neuron_mapping():
    m = convnet("if")
    g = export_nir(m)
    kinds = [type(g.nodes[n]).__name__ for n in g.nodes]
    stage = ["Conv2d", "IF", "Conv2d", "IF", "SumPool2d", "IF"]
    assert kinds == ["Input", *stage * 3, "Flatten", "Affine", "IF", "Affine", "Output"]
    assert g.nodes["input"].input_type["input"].tolist() == [1, 16, 16]
    assert g.nodes["output"].output_type["output"].tolist() == [10]
    assert g.metadata == {"source": "spikeformer", "dt": 1e-4, "readout": "mean_over_time",
                          "model": "spiking_convnet_digits", "T": 4}
    first = g.nodes["features.0.neuron"]
    assert first.r.shape == (16, 16, 16) and np.all(first.r == 1)
    assert np.all(first.v_threshold == np.float32(VTH)) and np.all(first.v_reset == 0)
    # max-pool of spikes = sum pool, then an IF firing iff the sum is at least one spike
    assert g.nodes["features.2.sum"].kernel_size.tolist() == [2, 2]
    assert np.all(g.nodes["features.2.any"].v_threshold == 0.5) and g.nodes["features.2.any"].r.shape == (16, 8, 8)
    # BatchNorm folded into the bias-free convolution: W * g / sqrt(var + eps), beta - mean * g / sqrt(var + eps)
    conv, bn = m.features[0].conv, m.features[0].bn
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert np.array_equal(g.nodes["features.0.conv"].weight, (conv.weight * a.view(-1, 1, 1, 1)).detach().numpy())
    assert np.array_equal(g.nodes["features.0.conv"].bias, (bn.bias - bn.running_mean * a).detach().numpy())
    assert np.array_equal(g.nodes["head"].weight, m.head.weight.detach().numpy())


@pytest.mark.parametrize("decay_input", [True, False])
def test_lif_parameters_follow_the_euler_step(decay_input):
    dt = 1e-3
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), LIF(tau=3.0, decay_input=decay_input, v_reset=0.25),
                          nn.Linear(3, 2), PLIF(init_tau=4.0, v_reset=0.0))
    g = export_nir(model, (4,), dt=dt)
    lif, plif = g.nodes["2"], g.nodes["4"]
    assert np.allclose(lif.tau, 3.0 * dt) and np.allclose(lif.r, 1.0 if decay_input else 3.0)
    assert np.all(lif.v_leak == 0.25) and np.all(lif.v_reset == 0.25) and np.all(lif.v_threshold == 1.0)
    assert np.allclose(plif.tau, 4.0 * dt) and plif.metadata["spikeformer_neuron"] == "PLIF"
    # one Euler step of NIR's tau dv/dt = (v_leak - v) + r I from v = v_reset is our charge equation
    x = torch.tensor([[[0.75, 2.0, 3.0]]])
    h = 0.25 + dt / float(lif.tau[0]) * (0.25 - 0.25 + float(lif.r[0]) * x)
    ref = LIF(tau=3.0, decay_input=decay_input, v_reset=0.25, v_threshold=1.0)
    assert torch.equal(ref(x), (h >= 1.0).float())
    back = read_nir(g)
    n2 = back.layers[back.keys["2"]]
    assert isinstance(n2, LIF) and n2.tau == 3.0 and n2.decay_input == decay_input and n2.v_reset == 0.25
    n4 = back.layers[back.keys["4"]]
    assert isinstance(n4, PLIF) and float(n4.w.detach()) == float(model[4].w.detach())


# -- round trip -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("neuron,numerics", [("if", "fast"), ("if", "exact"), ("lif", "fast")])
def test_round_trip_is_bit_equal(tmp_path, neuron, numerics):
    m = convnet(neuron, numerics)
    path = write_nir(m, tmp_path / "net.nir")
    net = read_nir(path)
    assert net.T == 4 and net.input_shape == (1, 16, 16) and net.dt == 1e-4
    x = images()
    with torch.no_grad():
        want_spikes = m.forward_features_per_step(x)
        want = m.forward_per_step(x)
    spikes, got = hidden_spikes(net, x)  # [B, C, H, W] images are repeated over T, as the model does
    assert 0.01 < float(want_spikes.mean()) < 0.5  # the comparison is over real activity
    assert torch.equal(spikes, want_spikes)
    assert torch.equal(got, want)
    assert torch.equal(got.mean(0), m(x))


def test_round_trip_of_the_graph_keeps_every_array(tmp_path):
    g = export_nir(convnet("lif"))
    nir.write(str(tmp_path / "g.nir"), g)
    back = nir.read(str(tmp_path / "g.nir"))
    assert sorted(back.nodes) == sorted(g.nodes) and sorted(back.edges) == sorted(g.edges)
    for name, node in g.nodes.items():
        for field in ("weight", "bias", "tau", "r", "v_leak", "v_threshold", "v_reset"):
            if hasattr(node, field):
                assert np.array_equal(getattr(back.nodes[name], field), getattr(node, field)), (name, field)


def test_random_weights_fold_batchnorm_within_rounding():
    """Generic weights: folding BatchNorm into the convolution changes float32 rounding (conv(x, W*a) + c instead of
    conv(x, W)*a + c), so the round trip is exact only up to that; on this input no spike flips."""
    torch.manual_seed(0)
    m = create_model("spiking_convnet_digits")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(0.0, 0.5)
    m.eval()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    net = read_nir(export_nir(m))
    with torch.no_grad():
        want_spikes, want = m.forward_features_per_step(x), m.forward_per_step(x)
    spikes, got = hidden_spikes(net, x)
    assert float(want_spikes.mean()) > 0.01
    assert torch.equal(spikes, want_spikes)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_sequential_model_round_trip():
    torch.manual_seed(0)
    model = dyadic_(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), IF(v_reset=0.0), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), LIF(tau=2.0), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 16, bias=False), nn.BatchNorm1d(16), IF(), nn.Dropout(0.5), nn.Linear(16, 5)))
    x = images(3).unsqueeze(0).expand(4, 3, 1, 16, 16)
    with torch.no_grad():
        want = x
        for layer in model:
            want = layer(want) if isinstance(layer, BaseNode) else seq_apply(layer, want)
        got = read_nir(export_nir(model, (1, 16, 16)))(x)
    g = export_nir(model, (1, 16, 16))
    assert [type(n).__name__ for n in g.nodes.values()] == [
        "Input", "Conv2d", "IF", "SumPool2d", "IF", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine", "IF", "Affine",
        "Output"]
    assert torch.equal(got, want)


# -- what NIR cannot express -------------------------------------------------------------------------------------------
def test_spiking_transformer_error_names_the_first_attention():
    with torch.device("meta"):
        m = create_model("spikingformer_cifar_2_384")
    with pytest.raises(NIRExportError) as e:
        export_nir(m, (3, 32, 32))
    assert (e.value.layer, e.value.layer_type) == ("block.0.attn", "SpikingSelfAttention")
    assert str(e.value).startswith("block.0.attn (SpikingSelfAttention): NIR has no spiking self-attention node")
    assert "spiking_convnet" in str(e.value)
    assert isinstance(e.value, SpikeformerError)


def test_soft_reset_and_maxpool_of_analog_values_are_refused():
    m = create_model("spiking_convnet_digits", neuron={"type": "if", "v_reset": None})
    with pytest.raises(NIRExportError, match=r"^features\.0\.neuron \(IF\): NIR neurons reset to v_reset"):
        export_nir(m)
    with pytest.raises(NIRExportError, match=r"^1 \(MaxPool2d\): NIR has no max-pool node"):
        export_nir(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), (1, 8, 8))
    with pytest.raises(NIRExportError, match=r"^SpikingConvNetLike: the NIR exporter follows nn.Sequential"):
        export_nir(type("SpikingConvNetLike", (nn.Module,), {})(), (1, 8, 8))


def test_import_refuses_what_it_cannot_run(tmp_path):
    one = np.ones(3, dtype=np.float32)
    cuba = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([3])}),
                               "syn": nir.CubaLIF(tau_syn=one, tau_mem=one, r=one, v_leak=0 * one, v_threshold=one),
                               "output": nir.Output(output_type={"output": np.array([3])})},
                        edges=[("input", "syn"), ("syn", "output")])
    with pytest.raises(SpikeformerError, match="NIR node 'syn' \\(CubaLIF\\): spikeformer cannot run"):
        read_nir(cuba)
    rec = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([3])}),
                              "lif": nir.IF(r=one, v_threshold=one),
                              "w": nir.Linear(weight=np.eye(3, dtype=np.float32)),
                              "output": nir.Output(output_type={"output": np.array([3])})},
                       edges=[("input", "lif"), ("lif", "w"), ("w", "lif"), ("lif", "output")])
    with pytest.raises(SpikeformerError, match="recurrent"):
        read_nir(rec)
    bad = tmp_path / "not.nir"
    bad.write_text("hello")
    with pytest.raises(SpikeformerError, match="not a readable NIR file"):
        read_nir(bad)


# -- CLI --------------------------------------------------------------------------------------------------------------
def test_cli_export_and_import(tmp_path, capsys):
    import argparse

    from spikeformer.convert import save_weights
    from spikeformer.convert.nir_cli import add_parsers

    m = convnet("if")
    save_weights(m, tmp_path / "w.safetensors", {"model": "spiking_convnet_digits"})
    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers())
    args = p.parse_args(["export-nir", "--model", "spiking_convnet_digits", "--checkpoint",
                         str(tmp_path / "w.safetensors"), str(tmp_path / "out.nir")])
    assert args.func(args) == 0
    g = nir.read(str(tmp_path / "out.nir"))
    assert np.array_equal(g.nodes["head"].weight, m.head.weight.detach().numpy())
    args = p.parse_args(["import-nir", str(tmp_path / "out.nir")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "features.2.any" in out and "output [4, 2, 10]" in out and "fc1_neuron" in out


# -- an independent consumer ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("neuron", ["if", "lif"])
def test_norse_gives_the_same_spikes_and_logits(tmp_path, neuron):
    pytest.importorskip("norse", reason="the cross-simulator check needs Norse (pip install 'spikeformer[test-nir]')")
    import norse.torch

    m = convnet(neuron)
    path = write_nir(m, tmp_path / "net.nir")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nirtorch's deprecation of the loader Norse calls
        net = norse.torch.from_nir(nir.read(str(path)), dt=1e-4)
    x = images()
    with torch.no_grad():
        want_spikes, want = m.forward_features_per_step(x), m.forward_per_step(x)
        outs, spikes = [], []
        for b in range(x.shape[0]):  # NIR's Flatten counts one sample's dimensions: Norse runs unbatched samples
            state, ys, ss = None, [], []
            for _ in range(m.T):
                y, state = net(x[b], state)
                ys.append(y)
                ss.append(state.cache["fc1_neuron"])
            outs.append(torch.stack(ys))
            spikes.append(torch.stack(ss))
    assert 0.01 < float(want_spikes.mean()) < 0.5
    assert torch.equal(torch.stack(spikes, 1), want_spikes)
    assert torch.equal(torch.stack(outs, 1), want)
