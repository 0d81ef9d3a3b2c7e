"""Static image datasets: CIFAR-10 / CIFAR-100 (torchvision, no download) and ImageNet-1k (ImageFolder), with
timm transforms. The defaults are the Spikformer recipes (reference 2.7); every option can be overridden.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpikeformerError
from .registry import register_dataset
from .transforms import static_transform

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("CIFAR100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 CIFAR100_MEAN, CIFAR100_STD),
}


def _cifar(name: str, split: str, root, augment=None, img_size: int = 32, mean=None, std=None,
           auto_augment: str = "rand-m9-n1-mstd0.4-inc1", re_prob: float = 0.25, hflip: float = 0.5,
           transform=None):
    import torchvision

    cls, folder, url, dmean, dstd = _CIFAR[name]
    root = Path(root).expanduser()
    if root.name == folder:  # the user pointed at the extracted folder itself
        root = root.parent
    if not (root / folder).is_dir():
        archive = url.rsplit("/", 1)[1]
        hint = f" Found {root / archive}: extract it (tar -xzf {archive} -C {root})." if (root / archive).is_file() else ""
        raise SpikeformerError(
            f"{name}: {root / folder} not found. Download {url} and extract it so that {root / folder}/ exists "
            f"(spikeformer does not download), then pass --set data_root={root}.{hint}"
        )
    train = split == "train"
    if transform is None:
        augment = train if augment is None else bool(augment)
        transform = static_transform(augment, img_size, mean or dmean, std or dstd,
                                     auto_augment=auto_augment if augment else None,
                                     re_prob=re_prob if augment else 0.0, hflip=hflip if augment else 0.0,
                                     scale=(1.0, 1.0), ratio=(1.0, 1.0), crop_pct=1.0)
    try:
        return getattr(torchvision.datasets, cls)(str(root), train=train, transform=transform, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise SpikeformerError(f"{name}: {root / folder} is incomplete or corrupt ({e}); re-extract {url}") from None


@register_dataset("cifar10", num_classes=10, input_size=(3, 32, 32),
                  description="CIFAR-10 via torchvision (cifar-10-batches-py/), no download",
                  default_model="spikformer_cifar_4_384")
def build_cifar10(split: str, root=None, T=None, **options):
    return _cifar("cifar10", split, root, **options)


@register_dataset("cifar100", num_classes=100, input_size=(3, 32, 32),
                  description="CIFAR-100 via torchvision (cifar-100-python/), no download",
                  default_model="spikformer_cifar_4_384")
def build_cifar100(split: str, root=None, T=None, **options):
    return _cifar("cifar100", split, root, **options)


def _cifar_signature(fn):
    """Expose _cifar's options as the builder's signature, so unknown data_kwargs are rejected by name."""
    import inspect

    opts = [p for n, p in inspect.signature(_cifar).parameters.items() if n not in ("name", "split", "root")]
    head = [p for n, p in inspect.signature(fn).parameters.items() if n in ("split", "root", "T")]
    fn.__signature__ = inspect.Signature(head + opts)
    return fn


build_cifar10 = _cifar_signature(build_cifar10)
build_cifar100 = _cifar_signature(build_cifar100)


@register_dataset("imagenet", num_classes=1000, input_size=(3, 224, 224),
                  description="ImageNet-1k via ImageFolder (train/ and val/ with one folder per class)",
                  default_model="spikformer_8_512")
def build_imagenet(split: str, root=None, T=None, augment=None, img_size: int = 224, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, auto_augment: str = "rand-m9-mstd0.5-inc1", re_prob: float = 0.25,
                   scale=(0.08, 1.0), crop_pct: float = 0.875, interpolation: str = "bicubic", transform=None):
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    sub = "train" if split == "train" else "val"
    d = root / sub
    if not d.is_dir():
        raise SpikeformerError(
            f"imagenet: {d} not found; expected {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG "
            "(the validation images sorted into one folder per class), then --set data_root=" + str(root)
        )
    classes = [p for p in d.iterdir() if p.is_dir()]
    if not classes:
        raise SpikeformerError(f"imagenet: {d} holds no class folders; the {sub} images must be sorted into "
                               "<wnid>/ folders (e.g. with the widely used valprep.sh for val/)")
    if transform is None:
        augment = split == "train" if augment is None else bool(augment)
        transform = static_transform(augment, img_size, mean, std, auto_augment=auto_augment if augment else None,
                                     re_prob=re_prob if augment else 0.0, scale=scale, interpolation=interpolation,
                                     crop_pct=crop_pct)
    return ImageFolder(str(d), transform=transform)
