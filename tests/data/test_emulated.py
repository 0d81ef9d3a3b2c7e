"""events-digits: real event streams from an emulated DVS, deterministic per sample, through events_to_frames;
and a short training run of the default DVS model on it clears a lower bar than the 10-minute recipe."""

import numpy as np
import pytest
import torch

from spikeformer.data.digits import digits_arrays
from spikeformer.data.emulated import REFRACTORY_US, emulate_events
from spikeformer.data.frames import events_to_frames
from spikeformer.data.registry import build_dataset, get_dataset_info


def test_registered_like_the_brief():
    info = get_dataset_info("events-digits")
    assert (info.kind, info.needs_root, info.default_model) == ("events", False, "spikformer_dvs_digits_1_64")
    assert info.input_size == (2, 32, 32) and info.num_classes == 10


def test_streams_are_deterministic_per_sample_and_physical():
    images, _ = digits_arrays("test")
    a = emulate_events(images[:6], np.arange(6), noise_hz=0.0)
    b = emulate_events(images[[4, 5]], np.array([4, 5]), noise_hz=0.0)  # same seeds, other batch
    for ev_a, ev_b in zip(a[4:], b):
        np.testing.assert_array_equal(ev_a, ev_b)
    for ev in a:
        assert 1000 < ev.size < 20000
        assert np.all(np.diff(ev["t"]) >= 0) and ev["t"].min() >= 0 and ev["t"].max() <= 300_000
        assert ev["x"].max() < 32 and ev["y"].max() < 32
        assert 0.3 < ev["p"].mean() < 0.7  # a moving digit makes both ON and OFF edges
        # refractory period: consecutive events of one pixel are at least REFRACTORY_US apart
        pix = ev["y"].astype(np.int64) * 32 + ev["x"]
        order = np.lexsort((ev["t"], pix))
        same = np.diff(pix[order]) == 0
        assert np.all(np.diff(ev["t"][order])[same] >= REFRACTORY_US - 1)
    # noise adds events but leaves the signal untouched in distribution terms
    noisy = emulate_events(images[:1], np.arange(1), noise_hz=5.0)[0]
    assert noisy.size > a[0].size


def test_dataset_frames_come_from_its_events():
    ds = build_dataset("events-digits", "test")
    assert len(ds) == 360 and len(build_dataset("events-digits", "train")) == 1437
    x, y = ds[7]
    assert x.shape == (8, 2, 32, 32) and x.dtype == torch.float32 and int(y) == int(digits_arrays("test")[1][7])
    np.testing.assert_array_equal(x.numpy(), events_to_frames(ds.events(7), 8, "number", (32, 32)))
    assert build_dataset("events-digits", "test", T=4)[7][0].shape == (4, 2, 32, 32)


@pytest.mark.slow
def test_short_training_run_learns():
    """One epoch (44 steps) of the default model; the 12-epoch recipe reaching >= 90 % is in the README.

    Measured: 0.43 held-out top-1 after this epoch (0.91 after 4, 0.93 after 6 epochs of the recipe).
    """
    import spikeformer

    torch.set_num_threads(2)
    # without the default shifts: one epoch of them learns less (0.18), the 15-epoch recipe more (README)
    train, test = build_dataset("events-digits", "train", augment=False), build_dataset("events-digits", "test")
    torch.manual_seed(0)
    model = spikeformer.create_model("spikformer_dvs_digits_1_64")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    for x, y in torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, drop_last=True):
        loss = torch.nn.functional.cross_entropy(model(x.transpose(0, 1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=120):
            correct += (model(x.transpose(0, 1)).argmax(1) == y).sum().item()
    acc = correct / len(test)
    print(f"events-digits one epoch: {acc:.3f} held-out top-1")
    assert acc >= 0.25, acc


def test_augment_option_shifts_training_frames_only():
    plain = build_dataset("events-digits", "train", augment=False)
    torch.manual_seed(0)
    rolled = build_dataset("events-digits", "train", augment={"roll": 3, "cutout": 0, "flip": 0})
    default = build_dataset("events-digits", "train")  # augmented by default, as the other event datasets
    assert any(not torch.equal(default[5][0], plain[5][0]) for _ in range(8))
    x0, y0 = plain[5]
    shifted = [rolled[5][0] for _ in range(8)]
    assert all(torch.equal(s.sum(), x0.sum()) for s in shifted)  # a roll moves events, never drops them
    assert any(not torch.equal(s, x0) for s in shifted)
    assert any(torch.equal(torch.roll(x0, (dy, dx), (-2, -1)), shifted[0])
               for dy in range(-3, 4) for dx in range(-3, 4))
    assert rolled[5][1] == y0
    assert torch.equal(build_dataset("events-digits", "test", augment=True)[5][0],
                       build_dataset("events-digits", "test")[5][0])


def test_unknown_augment_option_is_one_clear_error():
    from spikeformer.errors import SpikeformerError

    with pytest.raises(SpikeformerError, match=r"unknown option\(s\) 'roll:2'.*the options are cutout, cutout_scale"):
        build_dataset("events-digits", "train", augment={"roll:2": None})
