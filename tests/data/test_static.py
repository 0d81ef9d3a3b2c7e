"""Static datasets (clear errors, ImageFolder + timm transforms) and the augmentation helpers."""

import numpy as np
import pytest
import torch

from spikeformer.data.registry import build_dataset
from spikeformer.data.transforms import Cutout, FrameResize, MixupCutmix, RandomFlip, RandomRoll, dvs_augment
from spikeformer.errors import SpikeformerError


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_files_say_where_to_put_them(tmp_path, name, folder):
    with pytest.raises(SpikeformerError) as e:
        build_dataset(name, "train", root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / folder) in msg and "https://www.cs.toronto.edu/~kriz/" in msg and "does not download" in msg
    (tmp_path / folder).mkdir()  # present but empty: torchvision's integrity check fails -> our error
    with pytest.raises(SpikeformerError, match="incomplete or corrupt"):
        build_dataset(name, "test", root=str(tmp_path))


def test_imagenet_folder_with_timm_transforms(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (tmp_path / split / wnid).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / split / wnid / f"{i}.JPEG", "JPEG")
    train = build_dataset("imagenet", "train", root=str(tmp_path), img_size=32)
    val = build_dataset("imagenet", "test", root=str(tmp_path), img_size=32)
    assert len(train) == 4 and train.classes == ["n01440764", "n01443537"]
    x, y = train[3]
    assert x.shape == (3, 32, 32) and y == 1
    a, b = val[0][0], val[0][0]
    assert a.shape == (3, 32, 32) and torch.equal(a, b)  # eval transform is deterministic
    with pytest.raises(SpikeformerError, match="val"):
        build_dataset("imagenet", "test", root=str(tmp_path / "train"))


def test_dvs_augmentations_apply_the_same_draw_to_every_frame():
    torch.manual_seed(0)
    x = torch.arange(3 * 2 * 6 * 8, dtype=torch.float32).reshape(3, 2, 6, 8)
    assert torch.equal(RandomFlip(1.0)(x), x.flip(-1)) and torch.equal(RandomFlip(0.0)(x), x)
    r = RandomRoll(2)(x)
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
              if torch.equal(r, torch.roll(x, (dy, dx), (-2, -1)))]
    assert len(shifts) == 1
    c = Cutout(1.0, scale=(0.1, 0.1))(x + 1)
    zero = c == 0
    assert zero.any() and torch.equal(zero[0, 0].expand_as(zero), zero)  # same square on every frame/polarity
    side = int(zero[0, 0].any(1).sum())
    assert side == int(zero[0, 0].any(0).sum()) == round((0.1 * 48) ** 0.5)
    y = dvs_augment(flip=0.5, roll=3, cutout=0.5)(x)
    assert y.shape == x.shape
    f = FrameResize(3)(torch.ones(4, 2, 6, 6) * 2)
    assert f.shape == (4, 2, 3, 3) and torch.allclose(f, torch.full_like(f, 2.0))


def test_mixup_cutmix_on_clips_and_images():
    torch.manual_seed(0)
    mix = MixupCutmix(num_classes=5, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    x = torch.zeros(4, 3, 2, 8, 8)
    x[0] = 1.0
    y = torch.tensor([0, 1, 2, 3])
    xm, ym = mix(x.clone(), y)
    assert xm.shape == (4, 3, 2, 8, 8) and ym.shape == (4, 5)
    lam = ym[0, 0].item()  # batch mode: x[0] is mixed with x[3] (flipped batch) with weight lam
    assert torch.allclose(xm[0], torch.full_like(xm[0], lam)) and torch.allclose(ym.sum(1), torch.ones(4))
    img, t = MixupCutmix(num_classes=5)(torch.rand(2, 3, 8, 8), y[:2])
    assert img.shape == (2, 3, 8, 8) and t.shape == (2, 5)
    with pytest.raises(SpikeformerError, match="even"):
        mix(torch.zeros(3, 2, 2, 4, 4), y[:3])
