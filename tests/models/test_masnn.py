"""MA-SNN: the plug-in attention layers on controlled inputs, the Gesture network and Att-Res-SNN, the model
contract, and what the exact and fast numerics run."""

import copy
import math
import re
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spikeformer
from spikeformer.errors import SpikeformerError
from spikeformer.kernels.cpu import bf16
from spikeformer.layers import set_numerics
from spikeformer.models._base import SpikingClassifier
from spikeformer.layers.masnn import CA, CSA, SA, TA, TCA, TCSA, TSA, MultiDimAttention, build_attention
from spikeformer.models.masnn import MALIF, MS_LIF, AttResBlock, AttResNet, Rectangle, checkpoint_filter_fn
from spikeformer.neurons import LIF, neuron_factory


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small convolutions gain nothing from threads, and a shared CPU makes OpenMP threads spin
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def fill(module, value):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


# -- attention on controlled inputs ----------------------------------------------------------------------------

def test_ta_constant_input_gives_the_analytic_gate():
    # T=4, t_ratio=2 -> MLP 4 -> 2 -> 4. W1 = 0.25, W2 = 0.5, input constant c=2 (avg = max = 2 per step):
    # hidden = relu(4 * 0.25 * 2) = 2, out = 2 * 0.5 * 2 = 2 per step; avg + max branches -> 4; gate sigmoid(4).
    ta = TA(T=4, t_ratio=2)
    assert ta.ta.mlp[0].weight.shape == (2, 4)
    with torch.no_grad():
        ta.ta.mlp[0].weight.fill_(0.25)
        ta.ta.mlp[2].weight.fill_(0.5)
    x = torch.full((4, 2, 3, 5, 5), 2.0)
    gate = ta.ta(x)
    assert gate.shape == (4, 2, 1, 1, 1)
    torch.testing.assert_close(gate, torch.full_like(gate, 1 / (1 + math.exp(-4.0))))
    torch.testing.assert_close(ta(x), x * (1 / (1 + math.exp(-4.0))))


def test_ta_gates_differ_per_time_step():
    # Identity MLP (ratio 1): step t holds the constant t+1, so s_t = sigmoid(2 (t+1)); one gate per step.
    T = 5
    ta = TA(T=T, t_ratio=1)
    with torch.no_grad():
        ta.ta.mlp[0].weight.copy_(torch.eye(T))
        ta.ta.mlp[2].weight.copy_(torch.eye(T))
    x = torch.arange(1.0, T + 1).view(T, 1, 1, 1, 1).expand(T, 2, 4, 3, 3).contiguous()
    gate = ta.ta(x).flatten()
    expected = torch.sigmoid(2 * torch.arange(1.0, T + 1)).repeat_interleave(2)
    torch.testing.assert_close(gate, expected)
    assert len(set(gate[::2].tolist())) == T
    # a randomly initialised TA also gives each step its own weight when the steps differ
    torch.manual_seed(0)
    g = TA(T=T, t_ratio=1).ta(torch.randn(T, 2, 4, 3, 3))
    assert g.shape == (T, 2, 1, 1, 1) and g[:, 0].flatten().unique().numel() == T


def test_ta_on_fully_connected_features():
    ta = TA(T=6, t_ratio=3)
    x = torch.randn(6, 4, 10)
    assert ta.ta(x).shape == (6, 4, 1)
    assert ta(x).shape == x.shape


def test_ca_constant_input_and_broadcast_over_time():
    # C=8, c_ratio=4 -> 8 -> 2 -> 8, W1 = 0.1, W2 = -0.2, c = 3: hidden = relu(8*0.1*3) = 2.4,
    # out = 2 * 2.4 * -0.2 = -0.96; two branches -> sigmoid(-1.92) for every channel.
    ca = CA(channels=8, c_ratio=4)
    with torch.no_grad():
        ca.ca.mlp[0].weight.fill_(0.1)
        ca.ca.mlp[2].weight.fill_(-0.2)
    x = torch.full((3, 2, 8, 4, 4), 3.0)
    gate = ca.ca(x)
    assert gate.shape == (1, 2, 8, 1, 1)
    torch.testing.assert_close(gate, torch.full_like(gate, 1 / (1 + math.exp(1.92))))
    # one weight per (sample, channel), shared by every time step and pixel
    torch.manual_seed(0)
    ca = CA(channels=8, c_ratio=1)
    x = torch.randn(3, 2, 8, 4, 4)
    g = ca.ca(x)
    torch.testing.assert_close(ca(x), torch.relu(x * g))
    assert g[0, 0].unique().numel() == 8 and not torch.allclose(g[0, 0], g[0, 1])


def test_sa_constant_input_gives_the_analytic_map():
    # All-ones 3x3 kernel on the two pooled maps (both = c = 0.5) with zero padding: interior 9*2*c = 9,
    # edge 6*2*c = 6, corner 4*2*c = 4.
    sa = SA()
    fill(sa, 1.0)
    x = torch.full((4, 2, 3, 5, 6), 0.5)
    gate = sa.sa(x)
    assert gate.shape == (1, 2, 1, 5, 6)
    m = gate[0, 0, 0]
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert m[2, 2].item() == pytest.approx(sig(9.0))
    assert m[0, 3].item() == pytest.approx(sig(6.0))
    assert m[0, 0].item() == pytest.approx(sig(4.0))
    assert m[4, 5].item() == pytest.approx(sig(4.0))
    # pooled over time and channels: one map per sample, the same for every step and channel
    out = sa(x)
    torch.testing.assert_close(out, x * gate.expand_as(x))


def test_sa_pools_jointly_over_time_and_channels():
    # The mean and max run over all T*C planes: a single hot pixel in one (t, c) plane lifts the map at that
    # pixel for every time step.
    sa = SA()
    with torch.no_grad():
        sa.sa.conv.weight.zero_()
        sa.sa.conv.weight[0, 1, 1, 1] = 1.0  # centre tap of the max map
    x = torch.zeros(3, 1, 2, 4, 4)
    x[2, 0, 1, 1, 3] = 5.0
    gate = sa.sa(x)[0, 0, 0]
    assert gate[1, 3].item() == pytest.approx(1 / (1 + math.exp(-5.0)))
    assert torch.all(gate[torch.arange(4) != 1] == 0.5)


def test_tcsa_chains_t_then_c_then_s_and_ends_with_relu():
    torch.manual_seed(0)
    att = TCSA(T=4, channels=8, t_ratio=2, c_ratio=4)
    x = torch.randn(4, 2, 8, 5, 5)
    y = x * att.ta(x)
    y = y * att.ca(y)
    y = y * att.sa(y)
    torch.testing.assert_close(att(x), torch.relu(y))
    # gates are positive, so negative currents are all removed by the final ReLU
    assert torch.all(att(-x.abs()) == 0)
    # parameters: TA 2*4*2, CA 2*8*2, SA 2*9
    assert n_params(att) == 16 + 32 + 18


@pytest.mark.parametrize("kind,params", [("TA", 16), ("CA", 32), ("SA", 18), ("TCA", 48), ("TSA", 34), ("CSA", 50),
                                         ("TCSA", 66)])
def test_attention_variants_shapes_and_params(kind, params):
    att = build_attention(kind, T=4, channels=8, t_ratio=2, c_ratio=4)
    assert n_params(att) == params
    x = torch.randn(4, 2, 8, 6, 6, requires_grad=True)
    y = att(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_attention_errors():
    with pytest.raises(SpikeformerError, match="T=4"):
        TA(T=4)(torch.randn(5, 2, 3, 4, 4))
    with pytest.raises(SpikeformerError, match="8 channels"):
        CA(channels=8)(torch.randn(4, 2, 3, 4, 4))
    with pytest.raises(SpikeformerError, match="unknown MA-SNN attention"):
        build_attention("XYZ", 4, 8)
    assert build_attention("no", 4, 8) is None
    assert isinstance(build_attention("tcsa", 4, 8), TCSA)
    assert isinstance(build_attention("TCA", 4, 8), TCA) and isinstance(build_attention("TSA", 4, 8), TSA)
    assert isinstance(build_attention("CSA", 4, 8), CSA)


# -- the MA-SNN neuron -----------------------------------------------------------------------------------------

def test_malif_dynamics_and_rectangular_surrogate():
    # u = h + x; s = [u >= 0.3]; h = 0.3 * (s * 0.3 + (1 - s) * u). Input 0.2 every step:
    # u1 = 0.2 (no spike, h = 0.06), u2 = 0.26 (no, h = 0.078), u3 = 0.278 (no, h = 0.0834), u4 = 0.2834 (no) ...
    # converges to 0.2 / 0.7 = 0.2857 < 0.3: never fires. Input 0.25: u1 = .25, u2 = .325 fires, then h = .09,
    # u3 = .34 fires again.
    n = MALIF()
    assert n(torch.full((6, 1), 0.2)).sum() == 0
    torch.testing.assert_close(n(torch.full((3, 1), 0.25)).flatten(), torch.tensor([0.0, 1.0, 1.0]))
    r = Rectangle(0.5)
    torch.testing.assert_close(r.grad(torch.tensor([-0.3, -0.2, 0.0, 0.24, 0.26])),
                               torch.tensor([0.0, 2.0, 2.0, 2.0, 0.0]))


# -- MA-SNN network for DVS128 Gesture -------------------------------------------------------------------------

# Official Gesture net, T=60, c_ratio=8, t_ratio=5 (TA hidden 60//5 = 12 -> 2*60*12 = 1440 per TA):
#   conv 2->64 (3x3, bias) 1,216 + BN 128 | conv 64->128 73,856 + BN 256 | conv 128->128 147,584 + BN 256
#   FC 8192->256 2,097,408 + BN1d 512 | FC 256->11 2,827 + BN1d 22                         = 2,324,065 ('no')
#   CA: 2*64*8 + 2*128*16 * 2 = 9,216;  SA: 3 * 18 = 54;  TA: 5 layers * 1,440 = 7,200 (FC layers get TA when
#   the attention contains T). The official code (run outside the repo) builds the same numbers.
GESTURE_BASE = 1216 + 128 + 73856 + 256 + 147584 + 256 + 2097408 + 512 + 2827 + 22
GESTURE_PARAMS = {
    "no": GESTURE_BASE,
    "TA": GESTURE_BASE + 7200,
    "CA": GESTURE_BASE + 9216,
    "SA": GESTURE_BASE + 54,
    "TCA": GESTURE_BASE + 7200 + 9216,
    "TSA": GESTURE_BASE + 7200 + 54,
    "CSA": GESTURE_BASE + 9216 + 54,
    "TCSA": GESTURE_BASE + 7200 + 9216 + 54,
}


@pytest.mark.parametrize("attention", list(GESTURE_PARAMS))
def test_gesture_param_counts(attention):
    m = spikeformer.create_model("masnn_dvs_gesture", attention=attention)
    assert n_params(m) == GESTURE_PARAMS[attention]
    assert GESTURE_PARAMS["TCSA"] == 2_340_535


def test_gesture_forward_backward():
    torch.manual_seed(0)
    m = spikeformer.create_model("masnn_dvs_gesture")  # TCSA, T=60
    x = (torch.rand(60, 1, 2, 32, 32) < 0.2).float()
    y = m(x)
    assert y.shape == (1, 11)
    assert torch.all((y >= 0) & (y <= 1))  # firing rates of the output layer
    torch.nn.functional.mse_loss(y, torch.nn.functional.one_hot(torch.tensor([3]), 11).float()).backward()
    for name in ("features.0.attn.ta.mlp.0.weight", "features.2.attn.ca.mlp.2.weight",
                 "features.1.attn.sa.conv.weight", "fc0.attn.ta.mlp.0.weight", "features.0.conv.weight"):
        assert m.get_parameter(name).grad.abs().sum() > 0, name
    with pytest.raises(SpikeformerError, match="T=60"):
        m(torch.rand(16, 1, 2, 32, 32))


def test_gesture_checkpoint_filter():
    # An official-format state dict (DataParallel prefix stripped by the loader): module names and the
    # 1x1x1 Conv3d / Conv1d attention kernels.
    m = spikeformer.create_model("masnn_dvs_gesture", T=10, t_ratio=5)
    ours = {k: v.clone() for k, v in m.state_dict().items()}
    official = {}
    rules = [(r"^features\.(\d)\.conv\.", r"convAttLIF\1.conv2d."),
             (r"^features\.(\d)\.bn\.", r"convAttLIF\1.BNLayer."),
             (r"^features\.(\d)\.attn\.", r"convAttLIF\1.attention."),
             (r"^fc(\d)\.fc\.", r"FC\1.linear."),
             (r"^fc(\d)\.bn\.", r"FC\1.BNLayer."),
             (r"^fc(\d)\.attn\.", r"FC\1.attention."),
             (r"\.mlp\.", ".sharedMLP.")]
    for k, v in ours.items():
        ok = k
        for a, b in rules:
            ok = re.sub(a, b, ok)
        if ".sharedMLP." in ok:
            v = v[..., None] if ok.startswith("FC") else v[..., None, None, None]
        official[ok] = v.clone() + 1
    assert "convAttLIF0.attention.ta.sharedMLP.0.weight" in official
    assert official["convAttLIF0.attention.ta.sharedMLP.0.weight"].shape == (2, 10, 1, 1, 1)
    assert official["FC1.attention.ta.sharedMLP.2.weight"].shape == (10, 2, 1)
    mapped = checkpoint_filter_fn(official, m)
    m.load_state_dict(mapped, strict=True)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, ours[k] + 1)


# -- Att-Res-SNN -----------------------------------------------------------------------------------------------

def att_resnet_params(layers, c_ratio=8):
    """Att(CSA)-MS-ResNet, counted from the architecture: stem conv7x7 3->64 + BN; per block two 3x3 convs
    and BNs, CSA (2*C*(C/8) channel MLP + 18 spatial conv) and, on the first block of each stage (stride 2),
    a 1x1 conv + BN shortcut; fc 512 -> 1000."""
    total, c = 3 * 64 * 49 + 2 * 64, 64
    for width, n in zip((64, 128, 256, 512), layers):
        for i in range(n):
            total += c * width * 9 + width * width * 9 + 4 * width + 2 * width * (width // c_ratio) + 18
            if i == 0:
                total += c * width + 2 * width
            c = width
    return total + 512 * 1000 + 1000


def test_resnet104_param_count():
    m = spikeformer.create_model("masnn_resnet104")
    # 78,369,598: the number the official resnet104() builds too (checked outside the repo).
    assert n_params(m) == att_resnet_params((3, 8, 32, 8)) == 78_369_598
    assert m.T == 1


def test_resnet104_forward_backward():
    torch.manual_seed(0)
    m = spikeformer.create_model("masnn_resnet104", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    y = m(x)
    assert y.shape == (1, 10)
    y.sum().backward()
    assert m.stem_conv.weight.grad.abs().sum() > 0
    assert m.layer4[-1].attn.ca.mlp[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("attention", ["no", "TA", "CA", "SA", "TCA", "TSA", "CSA", "TCSA"])
def test_att_res_block_variants(attention):
    torch.manual_seed(0)
    blk = AttResBlock(16, 32, 2, T=4, neuron=neuron_factory(LIF, surrogate=Rectangle(1.0), **MS_LIF),
                      attention=attention, c_ratio=8, t_ratio=2)
    assert (blk.attn is None) == (attention == "no")
    assert blk.bn1.weight[0].item() == 0.5 and blk.bn2.weight[0].item() == pytest.approx(0.1)
    x = torch.randn(4, 2, 16, 8, 8, requires_grad=True)
    y = blk(x)
    assert y.shape == (4, 2, 32, 4, 4)
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    # identity shortcut when shape is kept
    blk2 = AttResBlock(32, 32, 1, T=4, neuron=neuron_factory(LIF, **MS_LIF), attention=attention, t_ratio=2)
    assert blk2.shortcut is None


def test_resnet_checkpoint_filter():
    m = AttResNet(layers=(1, 2, 1, 1), num_classes=5, T=1)
    ours = {k: v.clone() for k, v in m.state_dict().items()}
    official = {}
    for k, v in ours.items():
        ok = k.replace("stem_conv.", "conv1.0.").replace("stem_bn.", "conv1.1.bn.")
        for i in range(1, 5):
            ok = ok.replace(f"layer{i}.", f"conv{i + 1}_x.")
        ok = (ok.replace(".conv1.", ".residual_function.1.").replace(".bn1.", ".residual_function.2.bn.")
              .replace(".conv2.", ".residual_function.4.").replace(".bn2.", ".residual_function.5.bn.")
              .replace(".attn.", ".residual_function.6.attention.").replace(".mlp.", ".sharedMLP.")
              .replace(".shortcut.conv.", ".shortcut.1.").replace(".shortcut.bn.", ".shortcut.2.bn."))
        if ".sharedMLP." in ok:
            v = v[..., None, None, None]
        official[ok] = v.clone() - 1
    assert "conv3_x.1.residual_function.6.attention.ca.sharedMLP.0.weight" in official
    m.load_state_dict(checkpoint_filter_fn(official, m), strict=True)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, ours[k] - 1)


# -- the model contract and the two numerics ---------------------------------------------------------------------

def gesture_input(T=8, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (T, B, 2, 32, 32), generator=g).float()  # event counts per polarity


def small_resnet(**kw):
    return AttResNet(layers=(1, 1, 1, 1), num_classes=5, T=2, **kw)


@pytest.mark.parametrize("which", ["gesture", "resnet"])
def test_model_contract(which):
    torch.manual_seed(0)
    if which == "gesture":
        model, x, D, K = spikeformer.create_model("masnn_dvs_gesture", T=8), gesture_input(), 256, 11
    else:
        model, x, D, K = small_resnet(), torch.rand(2, 3, 32, 32) * 2 - 1, 512, 5
    assert isinstance(model, SpikingClassifier)
    model.eval()
    with torch.no_grad():
        y, per, feats = model(x), model.forward_per_step(x), model.forward_features(x)
    assert y.shape == (2, K) and per.shape == (model.T, 2, K) and feats.shape == (2, D)
    assert (per.mean(0) - y).abs().max().item() <= 1e-5
    classifier = model.get_classifier()
    assert classifier is (model.fc1 if which == "gesture" else model.fc)
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}
    keys = list(model.state_dict())
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    if which == "gesture":  # a fresh output layer: Linear, BN1d, TA (TCSA has T) and the MA-SNN neuron
        assert model.fc1.fc.weight.shape == (3, 256) and model.fc1.attn is not None
        assert isinstance(model.fc1.neuron, MALIF)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, D)
    model.reset_classifier(K)
    set_numerics(model, "exact")
    assert list(model.state_dict()) == keys


class OpLog(TorchDispatchMode):
    """The aten operations of a forward; for each convolution, its input layout and output channels."""

    def __init__(self):
        super().__init__()
        self.count, self.convs = Counter(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.count[name] += 1
        if name == "convolution":
            x = args[0]
            nchw, cl = x.is_contiguous(), x.is_contiguous(memory_format=torch.channels_last)
            layout = "either" if nchw and cl else "nchw" if nchw else "channels_last" if cl else "other"  # 1x1 maps
            self.convs.append((layout, args[1].shape[0]))
        return func(*args, **(kwargs or {}))


def test_gesture_exact_and_fast_numerics():
    """Exact: the three convolutions NCHW over the merged T*B batch and the two fully connected layers as
    ``nn.Linear`` products (the official operations); fast: channels-last frames, the convolutions over the few
    nonzero spikes, and the same firing rates but for a few spikes flipped by rounding."""
    torch.manual_seed(0)
    model = spikeformer.create_model("masnn_dvs_gesture", T=8, numerics="exact").train()
    fast = copy.deepcopy(model)
    set_numerics(fast, "fast")
    x = gesture_input()
    with torch.no_grad(), OpLog() as exact_ops:
        y_exact = model(x)
    features = [c for c in exact_ops.convs if c[1] > 1]  # the spatial attention's 2->1 convolutions aside
    assert features == [("nchw", 64), ("nchw", 128), ("nchw", 128)]
    assert exact_ops.count["addmm"] == 2
    with torch.no_grad(), OpLog() as fast_ops:
        y_fast = fast(x)
    assert [c for c in fast_ops.convs if c[1] > 1] == [("channels_last", 64)]  # the others: over nonzero spikes
    # the attention of the three convolutional layers by the gate kernels: the means over frames run only in the
    # unfused forward (three gates per layer); both keep the fully connected layers' TA and the output's mean
    assert exact_ops.count["mean"] == 3 * 3 + 2 + 1 and fast_ops.count["mean"] == 2 + 1
    # the fully connected layers (16 rows): too few to list their nonzero spikes (layers/sparse.py, MIN_LIST_ROWS),
    # so the dense products, on oneDNN where that is this CPU's fp32 GEMM and the product large enough
    # (kernels/cpu/linear.py), else addmm
    from spikeformer.kernels.cpu import linear as L

    rows, t = x.shape[0] * x.shape[1], torch.empty(0)
    blas = sum(not L._onednn_for(rows * fc.in_features * fc.out_features, t, t) for fc in (fast.fc0.fc, fast.fc1.fc))
    assert fast_ops.count["addmm"] == blas
    assert y_exact.abs().sum() > 0
    assert (y_fast - y_exact).abs().max().item() <= 2 / 8 and (y_fast != y_exact).float().mean().item() <= 0.1


def test_resnet_exact_and_fast_numerics():
    """Exact and fp32 fast: the official NCHW convolutions; under bf16 autocast: channels-last frames."""
    torch.manual_seed(0)
    model = small_resnet().eval()
    set_numerics(model, "exact")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad(), OpLog() as exact_ops:
        y_exact = model(x)
    convs = [c for c in exact_ops.convs if c[1] > 1]
    assert len(convs) == 1 + 4 * 2 + 4 and {c[0] for c in convs} <= {"nchw", "either"}  # stem, 2 per block, shortcuts
    set_numerics(model, "fast")
    with torch.no_grad(), OpLog() as fast_ops:
        y_fast = model(x)
    # fp32: NCHW frames on the fast path too (channels-last convolutions train slower for these shapes on CPU)
    assert {c[0] for c in fast_ops.convs if c[1] > 1} <= {"nchw", "either"}
    torch.testing.assert_close(y_fast, y_exact, rtol=0, atol=1e-4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), bf16.emulation(False), OpLog() as bf16_ops:
        y_bf16 = model(x[:1])  # bf16 products (a CPU with bf16 instructions): the blocks' channels-last fast path
    assert {c[0] for c in bf16_ops.convs if c[1] > 1} <= {"channels_last", "either"}
    assert "channels_last" in {c[0] for c in bf16_ops.convs} and torch.isfinite(y_bf16).all()
    # bf16 products emulated: the fp32 fast path's convolutions (NCHW here) on the bf16 values, none in bf16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), bf16.emulation(True), OpLog() as emu_ops:
        y_emu = model(x[:1])
    with torch.no_grad(), OpLog() as fp32_ops:
        model(x[:1])
    def nchw(convs):  # the stem's input, a static image repeated over T, is a strided view in fp32 ("other")
        return [("nchw" if c[0] == "other" else c[0], c[1]) for c in convs if c[1] > 1]

    assert nchw(emu_ops.convs) == nchw(fp32_ops.convs) and len(emu_ops.convs) == len(fp32_ops.convs)
    assert "channels_last" not in {c[0] for c in emu_ops.convs}
    assert y_emu.dtype == torch.bfloat16 and torch.isfinite(y_emu).all()


@pytest.mark.parametrize("dims", ["TCS", "T", "C", "S", "TC", "TS", "CS"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_attention_equals_forward(dims, dtype):
    """The fast path's gate kernels (``MultiDimAttention.fused``) against the official operations of ``forward`` in
    fp32: outputs, frame gradients and the gates' parameter gradients, on channels-last frames."""
    torch.manual_seed(0)
    att = MultiDimAttention(dims, T=4, channels=24, t_ratio=2, c_ratio=4)
    x = torch.randn(4, 3, 7, 6, 24).permute(0, 1, 4, 2, 3).to(dtype)  # [T, B, C, H, W], channels-last frames
    xf, xr = x.detach().clone().requires_grad_(), x.detach().float().requires_grad_()
    y, ref = att.fused(xf), att(xr)
    assert y.dtype == dtype and y.stride() == x.stride()
    g = torch.randn(ref.shape)
    grads = torch.autograd.grad((y.float() * g).sum(), [xf] + list(att.parameters()))
    ref_grads = torch.autograd.grad((ref * g).sum(), [xr] + list(att.parameters()))
    tol = 1e-6 if dtype == torch.float32 else 2 ** -6  # sums in another order; bf16 frames and outputs
    torch.testing.assert_close(y.float(), ref, rtol=tol, atol=tol)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), r, rtol=tol, atol=tol * r.abs().max().item())


def test_fused_attention_declines_what_it_cannot_run():
    att = TCSA(T=4, channels=8, t_ratio=2, c_ratio=2)
    nchw = torch.randn(4, 2, 8, 5, 5)
    assert att.fused(nchw) is None  # NCHW frames: the caller runs forward
    assert att.fused(nchw.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3).double()) is None
    wrong_t = torch.randn(3, 2, 5, 5, 8).permute(0, 1, 4, 2, 3)
    assert att.fused(wrong_t) is None
    with pytest.raises(SpikeformerError, match="built for T=4"):
        att(wrong_t)


@pytest.mark.parametrize("which", ["gesture", "resnet"])
def test_fast_training_step(which):
    """A training step in fast numerics (the default): finite gradients for every parameter, the loss of the exact
    path up to rounding."""
    torch.manual_seed(0)
    if which == "gesture":
        exact, x = spikeformer.create_model("masnn_dvs_gesture", T=8, numerics="exact"), gesture_input(B=4)
    else:
        exact, x = small_resnet(), torch.rand(4, 3, 32, 32) * 2 - 1
        set_numerics(exact, "exact")
    fast = copy.deepcopy(exact)
    set_numerics(fast, "fast")
    target = torch.tensor([0, 1, 2, 3])
    losses = {}
    for tag, model in (("exact", exact), ("fast", fast)):
        model.train()
        torch.manual_seed(1)  # the same dropout mask
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        losses[tag] = loss.item()
    assert losses["fast"] == pytest.approx(losses["exact"], abs=1e-3)
    for k, p in fast.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), k
