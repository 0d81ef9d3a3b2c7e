"""Voxel grids of event streams (time bins x polarities as channels), resized to the model input."""

import numpy as np
import pytest
import torch

import spikeformer
from spikeformer.data.events.types import EVENT_DTYPE
from spikeformer.data.voxel import VoxelDataset, VoxelGrid, events_to_voxel, voxel_option
from spikeformer.errors import SpikeformerError


def _events(rows):
    rows = list(rows)
    ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, (t, x, y, p) in enumerate(rows):
        ev[i] = (t, x, y, p)
    return ev


def test_bilinear_time_bins_and_polarity_channels():
    # 3 bins over t in [0, 100]: t* = 2 t / 100
    ev = _events([(0, 1, 0, 1), (25, 1, 0, 1), (50, 2, 1, 0), (100, 0, 2, 0), (75, 0, 2, 1)])
    v = events_to_voxel(ev, bins=3, size=(3, 4))
    assert v.shape == (6, 3, 4) and v.dtype == np.float32
    # channel 2 b + p
    assert v[1, 0, 1] == 1.5 and v[3, 0, 1] == 0.5  # t=0 -> bin 0; t=25 -> half bin 0, half bin 1 (ON)
    assert v[2, 1, 2] == 1.0  # t=50 -> bin 1, OFF
    assert v[4, 2, 0] == 1.0  # t=100 -> bin 2, OFF
    assert v[3, 2, 0] == 0.5 and v[5, 2, 0] == 0.5  # t=75 -> half bin 1, half bin 2, ON
    assert v.sum() == len(ev)
    counts = np.zeros((3, 4))
    np.add.at(counts, (ev["y"], ev["x"]), 1)
    assert np.array_equal(v.sum(0), counts)  # every event's weights sum to 1 at its pixel
    assert (v >= 0).all()


def test_single_timestamp_and_errors():
    v = events_to_voxel(_events([(7, 0, 0, 0), (7, 1, 0, 1)]), bins=4, size=(1, 2))
    assert v[0, 0, 0] == 1 and v[1, 0, 1] == 1 and v.sum() == 2  # all in the first bin
    with pytest.raises(SpikeformerError, match="empty"):
        events_to_voxel(_events([]), bins=2)
    with pytest.raises(SpikeformerError, match="outside"):
        events_to_voxel(_events([(0, 5, 0, 0)]), bins=2, size=(2, 2))
    with pytest.raises(SpikeformerError, match="bins"):
        events_to_voxel(_events([(0, 0, 0, 0)]), bins=0)


def test_voxel_grid_resizes_and_normalises():
    rng = np.random.default_rng(0)
    n = 500
    ev = _events(zip(np.sort(rng.integers(0, 10_000, n)), rng.integers(0, 32, n), rng.integers(0, 32, n),
                     rng.integers(0, 2, n)))
    full = VoxelGrid(bins=5, sensor_size=(32, 32))(ev)
    assert full.shape == (10, 32, 32) and full.sum().item() == pytest.approx(n)
    small = VoxelGrid(bins=5, sensor_size=(32, 32), size=16)(ev)
    assert small.shape == (10, 16, 16)
    assert torch.allclose(small, full.view(10, 16, 2, 16, 2).mean((2, 4)))  # area averaging
    assert VoxelGrid(bins=5, sensor_size=(32, 32), size=(48, 40))(ev).shape == (10, 48, 40)  # bilinear up
    m = VoxelGrid(bins=5, sensor_size=(32, 32), normalize="max")(ev)
    assert m.max().item() == 1.0
    s = VoxelGrid(bins=5, sensor_size=(32, 32), normalize="std")(ev)
    nz = full != 0
    assert torch.equal(s == 0, ~nz)
    assert s[nz].mean().item() == pytest.approx(0.0, abs=1e-5) and s[nz].std().item() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(SpikeformerError, match="normalize"):
        VoxelGrid(normalize="l2")


class _FakeEvents:
    """The interface every event dataset of spikeformer.data has: events(i), targets, sensor_size."""

    sensor_size = (20, 24)

    def __init__(self):
        rng = np.random.default_rng(1)
        self.streams = [_events(zip(np.sort(rng.integers(0, 1000, 80)), rng.integers(0, 24, 80),
                                    rng.integers(0, 20, 80), rng.integers(0, 2, 80))) for _ in range(3)]
        self.targets = [2, 0, 1]

    def events(self, i):
        return self.streams[i]


def test_voxel_dataset_feeds_an_ann():
    base = _FakeEvents()
    ds = voxel_option(base, "voxel", bins=3, size=16)
    assert isinstance(ds, VoxelDataset) and len(ds) == 3 and ds.in_chans == 6
    x, y = ds[0]
    assert x.shape == (6, 16, 16) and y == 2
    full = torch.from_numpy(events_to_voxel(base.events(0), 3, base.sensor_size))  # on the dataset's sensor
    assert torch.allclose(x, torch.nn.functional.adaptive_avg_pool2d(full, 16))
    assert voxel_option(base, "frames") is base
    with pytest.raises(SpikeformerError, match="representation"):
        voxel_option(base, "histogram")
    with pytest.raises(SpikeformerError, match="not an event dataset"):
        VoxelDataset(torch.utils.data.TensorDataset(torch.zeros(2, 1)))
    # a static [B, 2*bins, H, W] batch for the ANN (and, step after step, for its converted SNN)
    model = spikeformer.create_model("mst_digits", in_chans=ds.in_chans).eval()
    batch = torch.stack([ds[i][0] for i in range(3)])
    with torch.no_grad():
        assert model(batch).shape == (3, 10)


def test_every_event_dataset_offers_voxel_grids_through_data_kwargs():
    from spikeformer.data import build_dataset
    from spikeformer.errors import SpikeformerError

    ds = build_dataset("events-digits", "test", representation="voxel", bins=3, size=24)
    x, y = ds[0]
    assert tuple(x.shape) == (6, 24, 24) and float(x.min()) >= 0 and float(x.sum()) > 0
    assert int(y) == int(build_dataset("events-digits", "test")[0][1])
    with pytest.raises(SpikeformerError, match="not an event dataset"):
        build_dataset("digits", "test", representation="voxel")
