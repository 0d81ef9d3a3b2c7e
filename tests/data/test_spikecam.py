"""Spike cameras: the .dat format (round trips, orientation on a known pattern, errors), the simulator's firing
rate, the TFP / TFI baselines, the embedded spikecam-digits and the REDS-layout folder dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeformer.data import build_dataset, get_dataset_info
from spikeformer.data.spikecam import (count_spike_frames, read_spike_camera, simulate_spike_camera, tfi, tfp,
                                       write_spike_camera)
from spikeformer.errors import SpikeformerError


def _community_decode(raw: bytes, h: int, w: int) -> np.ndarray:
    """Spk2ImgNet's raw_to_spike, restated: pixel p of a frame is bit p % 8 of byte p // 8, then flipud."""
    seq = np.frombuffer(raw, dtype=np.uint8)
    pix = np.arange(h * w).reshape(h, w)
    comparator = np.left_shift(1, np.mod(pix, 8))
    n = len(seq) // (h * w // 8)
    out = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        frame = seq[i * h * w // 8:(i + 1) * h * w // 8][pix // 8]
        out[i] = np.flipud(np.bitwise_and(frame, comparator) == comparator)
    return out


# ------------------------------------------------------------------------------------------------------ the format
def test_orientation_on_a_known_pattern(tmp_path):
    # 4x8 frame = 4 bytes. Byte 0 bit 0 is stored pixel 0 (top-left in file order); byte 3 bit 7 is pixel 31.
    # Frames are stored upside down, so they land bottom-left and top-right.
    path = tmp_path / "pattern.dat"
    path.write_bytes(bytes([0x01, 0x00, 0x00, 0x80]) + bytes([0x00, 0x02, 0x00, 0x00]))
    s = read_spike_camera(path, height=4, width=8)
    assert s.shape == (2, 4, 8) and s.dtype == np.uint8
    assert [tuple(p) for p in np.argwhere(s[0])] == [(0, 7), (3, 0)]
    assert [tuple(p) for p in np.argwhere(s[1])] == [(2, 1)]  # byte 1 bit 1 = pixel 9: stored row 1 col 1
    assert np.array_equal(s, _community_decode(path.read_bytes(), 4, 8))
    write_spike_camera(tmp_path / "again.dat", s)
    assert (tmp_path / "again.dat").read_bytes() == path.read_bytes()


def test_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    spikes = (rng.random((7, 10, 16)) < 0.3).astype(np.uint8)
    path = write_spike_camera(tmp_path / "a.dat", torch.from_numpy(spikes))
    assert path.stat().st_size == 7 * 10 * 16 // 8 and count_spike_frames(path, 10, 16) == 7
    assert np.array_equal(read_spike_camera(path, 10, 16), spikes)
    assert np.array_equal(read_spike_camera(path, 10, 16, start=2, count=3), spikes[2:5])
    assert np.array_equal(_community_decode(path.read_bytes(), 10, 16), spikes)
    # the camera's own size: 250x400 frames of 12,500 bytes
    big = (rng.random((2, 250, 400)) < 0.5).astype(np.uint8)
    write_spike_camera(tmp_path / "b.dat", big)
    assert (tmp_path / "b.dat").stat().st_size == 25_000
    assert np.array_equal(read_spike_camera(tmp_path / "b.dat"), big)


def test_bad_files_give_one_clear_error(tmp_path):
    path = tmp_path / "cut.dat"
    path.write_bytes(bytes(12_500 * 3 + 100))
    with pytest.raises(SpikeformerError, match=r"cut\.dat: 37600 bytes is not a whole number of 250x400 spike "
                                               r"frames .*3 whole frame\(s\) and 100 bytes left over.*truncated"):
        read_spike_camera(path)
    (tmp_path / "empty.dat").write_bytes(b"")
    with pytest.raises(SpikeformerError, match="empty.dat: 0 bytes"):
        read_spike_camera(tmp_path / "empty.dat")
    with pytest.raises(SpikeformerError, match="not found"):
        read_spike_camera(tmp_path / "missing.dat")
    with pytest.raises(SpikeformerError, match="height\\*width must divide by 8"):
        read_spike_camera(path, height=3, width=3)
    with pytest.raises(SpikeformerError, match="only 0 and 1"):
        write_spike_camera(tmp_path / "x.dat", np.full((1, 2, 4), 2))
    ok = write_spike_camera(tmp_path / "ok.dat", np.zeros((3, 2, 4)))
    with pytest.raises(SpikeformerError, match="holds 3"):
        read_spike_camera(ok, 2, 4, start=2, count=2)


# -------------------------------------------------------------------------------------------------- the camera
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_firing_rate_is_proportional_to_intensity(noise):
    levels = torch.linspace(0, 1, 11)
    frames = 4000
    intensity = levels.view(1, 11, 1).expand(frames, 11, 50)  # 50 pixels per level
    g = torch.Generator().manual_seed(0)
    spikes = simulate_spike_camera(intensity, rate=0.6, noise=noise, generator=g)
    assert spikes.dtype == torch.uint8 and set(spikes.unique().tolist()) <= {0, 1}
    measured = spikes.float().mean(dim=(0, 2))
    assert measured[0] == 0  # no light, no spikes
    # integrate-and-fire with reset by subtraction: the count over F frames is within one spike of rate * I * F
    # (plus the noise's random walk, whose spread is noise * sqrt(rate * I * F) spikes)
    tol = (1 + 4 * noise * (0.6 * frames) ** 0.5) / frames
    assert (measured - 0.6 * levels).abs().max().item() <= tol
    slope, intercept = np.polyfit(levels.numpy(), measured.numpy(), 1)
    assert abs(slope - 0.6) < 2e-3 and abs(intercept) < 1e-3


def test_tfp_and_tfi_on_periodic_spikes():
    # a pixel firing every k frames, rate 0.5: TFP = (spikes / frames) / rate, TFI = 1 / (k * rate)
    s = torch.zeros(2, 21, 1, 3, dtype=torch.uint8)
    for j, k in enumerate((2, 4, 5)):
        s[:, ::k, 0, j] = 1
    assert torch.allclose(tfi(s, rate=0.5)[0, 0], torch.tensor([1.0, 0.5, 0.4]))
    counts = torch.tensor([11.0, 6.0, 5.0])
    assert torch.allclose(tfp(s, rate=0.5)[0, 0], (counts / 21 / 0.5).clamp(max=1))
    assert torch.allclose(tfp(s, rate=0.5, window=5)[0, 0], torch.tensor([1.0, 0.8, 0.4]))  # frames 8..12
    # no spike after the key frame: less than one spike per window
    lone = torch.zeros(9, 1, 1, dtype=torch.uint8)
    lone[2] = 1
    assert torch.allclose(tfi(lone, rate=1.0), torch.tensor([[1 / 8]]))


# -------------------------------------------------------------------------------------------------- the datasets
def test_spikecam_digits_is_embedded_fixed_and_simulated():
    info = get_dataset_info("spikecam-digits")
    assert not info.needs_root and info.kind == "spikecam" and info.default_model == "spikeformer_recon_digits"
    a = build_dataset("spikecam-digits", "test", T=33)
    assert len(a) == 360
    # fixed: every build of a split sees the same scenes and the same spikes; the splits differ
    b, c = (build_dataset("spikecam-digits", "test", T=9, size=16, digit_size=8, limit=24) for _ in range(2))
    assert torch.equal(b.spikes, c.spikes) and torch.equal(b.images, c.images)
    d = build_dataset("spikecam-digits", "train", T=9, size=16, digit_size=8, limit=24)
    assert not torch.equal(b.images, d.images)
    spikes, img = a[0]
    assert spikes.shape == (33, 32, 32) and spikes.dtype == torch.uint8 and img.shape == (1, 32, 32)
    assert set(a.spikes.unique().tolist()) == {0, 1} and 0 <= a.images.min() and a.images.max() <= 1
    # the camera model: over the windows the firing rate is rate x the mean intensity
    assert abs(a.spikes.float().mean().item() / (0.6 * a.images.mean().item()) - 1) < 0.03
    # the classical baselines on the held-out windows (numbers of the README table)
    from spikeformer.analysis.image_metrics import psnr, to_uint8

    p = psnr(to_uint8(tfp(a.spikes, a.rate)), (a.images[:, 0] * 255).round().to(torch.uint8)).mean().item()
    assert p == pytest.approx(24.00, abs=0.01)
    assert len(b[0][0]) == 9 and b[0][1].shape == (1, 16, 16)


def _reds_tree(root, names, frames=7, h=8, w=16, spike_dir="spike"):
    """The layout of spikezoo's REDS_BASE (``spike/``) or Spk2ImgNet's folders (``input/``), with tiny files."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        (root / split / spike_dir).mkdir(parents=True)
        (root / split / "gt").mkdir()
        for n in names:
            write_spike_camera(root / split / spike_dir / f"{n}.dat",
                               (rng.random((frames, h, w)) < 0.4).astype(np.uint8))
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / split / "gt" / f"{n}.png")


def test_spike_reds_layout(tmp_path):
    from PIL import Image

    _reds_tree(tmp_path, ["000_00", "001_00"])
    info = get_dataset_info("spike-reds")
    assert info.needs_root and info.kind == "spikecam" and info.default_model == "spikeformer_recon"
    ds = build_dataset("spike-reds", "test", root=str(tmp_path), T=5, height=8, width=16)
    assert len(ds) == 2 and ds.names == ["000_00", "001_00"] and ds.rate == 0.6
    spikes, img = ds[1]
    full = read_spike_camera(tmp_path / "test" / "spike" / "001_00.dat", 8, 16)
    assert spikes.dtype == torch.uint8 and torch.equal(spikes, torch.from_numpy(full[1:6]))  # 5 frames around 3
    png = np.array(Image.open(tmp_path / "test" / "gt" / "001_00.png"))
    assert img.shape == (1, 8, 16) and torch.equal((img[0] * 255).round().to(torch.uint8), torch.from_numpy(png))
    even = build_dataset("spike-reds", "train", root=str(tmp_path), T=4, height=8, width=16)[0][0]
    train_full = read_spike_camera(tmp_path / "train" / "spike" / "000_00.dat", 8, 16)
    assert torch.equal(even, torch.from_numpy(train_full[1:5]))  # [mid - 2, mid + 2), as spikezoo cuts even windows
    with pytest.raises(SpikeformerError, match="holds 7 frames, fewer than the window of 9"):
        build_dataset("spike-reds", "test", root=str(tmp_path), T=9, height=8, width=16)
    with pytest.raises(SpikeformerError, match="needs its files"):
        build_dataset("spike-reds", "test")
    with pytest.raises(SpikeformerError, match="has no spike/ \\(or input/\\) folder"):
        build_dataset("spike-reds", "test", root=str(tmp_path / "nowhere"), T=5)


def test_spike_reds_spk2imgnet_folders_and_bad_files(tmp_path):
    _reds_tree(tmp_path, ["0000", "0001"], spike_dir="input")
    ds = build_dataset("spike-reds", "train", root=str(tmp_path), T=7, height=8, width=16)
    assert ds.names == ["0000", "0001"]
    assert torch.equal(ds[0][0], torch.from_numpy(read_spike_camera(tmp_path / "train" / "input" / "0000.dat", 8,
                                                                    16)))
    # a truncated recording is named when the dataset is built, not halfway through an epoch
    bad = tmp_path / "test" / "input" / "0001.dat"
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(SpikeformerError, match=r"0001\.dat: 109 bytes is not a whole number of 8x16 spike frames"):
        build_dataset("spike-reds", "test", root=str(tmp_path), T=5, height=8, width=16)
    (tmp_path / "train" / "gt" / "0000.png").unlink()
    with pytest.raises(SpikeformerError, match="no ground truth.*0000.png"):
        build_dataset("spike-reds", "train", root=str(tmp_path), T=5, height=8, width=16)
