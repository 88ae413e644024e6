"""Data modules on tiny data sets written in the real on-disk formats (fixtures in conftest.py)."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attnzoo.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataNotFoundError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    TensorImageDataset,
)
from attnzoo.data import fashion_mnist as fm
from attnzoo.data.fashion_mnist import read_idx
from attnzoo.data.imagefolder import batched_random_resized_crop
from attnzoo.data.inmemory import random_crop_flip

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_default_data(monkeypatch, tmp_path):
    """No $ATTNZOO_DATA, an empty cache folder and no system folders: only explicit paths are found."""
    monkeypatch.delenv("ATTNZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(fm, "SYSTEM_DIRS", [str(tmp_path / "system" / "fashion-mnist")])
    return tmp_path


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(x.flatten().tolist()) for x in images}


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _training(dm, epoch: int = 0):
    dm.trainer = SimpleNamespace(training=True, current_epoch=epoch, global_rank=0)
    return dm


# -- file formats --------------------------------------------------------------------------------
def test_read_idx_gzip_and_raw_give_the_same_uint8_array(fmnist_dir, fmnist_raw_dir):
    gz = read_idx(fmnist_dir / "train-images-idx3-ubyte.gz")
    raw = read_idx(fmnist_raw_dir / "FashionMNIST" / "raw" / "train-images-idx3-ubyte")
    assert gz.dtype == torch.uint8 and gz.shape == (100, 28, 28)
    assert torch.equal(gz, raw)
    # hand decode: 16-byte header (magic 0x00000803, 3 big-endian sizes), then pixels row-major
    data = gzip.decompress((fmnist_dir / "train-images-idx3-ubyte.gz").read_bytes())
    assert data[:4] == b"\x00\x00\x08\x03"
    assert gz[1, 2, 3].item() == data[16 + 1 * 784 + 2 * 28 + 3]


def test_read_idx_rejects_bad_magic_and_truncated_files(tmp_path, fmnist_raw_dir):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(bad)
    good = (fmnist_raw_dir / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    short = tmp_path / "short-idx"
    short.write_bytes(good[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(short)


def test_cifar10_reads_torchvision_pickles_in_batch_order(cifar10_dir):
    dm = CIFAR10DataModule(cifar10_dir)
    images, targets = dm.load_split("train")
    labels, first = [], None
    for i in range(1, 6):
        with open(cifar10_dir / "cifar-10-batches-py" / f"data_batch_{i}", "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        labels += entry["labels"]
        first = entry["data"][0] if first is None else first
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8
    assert targets.tolist() == labels
    # row layout: 1024 red bytes, 1024 green, 1024 blue, each plane 32x32 row-major
    assert images[0, 1, 2, 5].item() == first[1024 + 2 * 32 + 5]
    assert dm.classes[0] == "airplane"


def test_cifar100_uses_the_fine_labels(cifar100_dir):
    dm = CIFAR100DataModule(cifar100_dir)
    images, targets = dm.load_split("train")
    with open(cifar100_dir / "cifar-100-python" / "train", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert targets.tolist() == entry["fine_labels"]
    assert dm.num_classes == 100 and int(targets.max()) == 99
    assert images.shape == (300, 3, 32, 32)


# -- batches -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, shape, mean, std",
    [
        (lambda d: FashionMNISTDataModule(d["fmnist"], batch_size=4), (1, 28, 28), (0.2860,), (0.3530,)),
        (lambda d: CIFAR10DataModule(d["cifar10"], batch_size=4), (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        (lambda d: CIFAR100DataModule(d["cifar100"], batch_size=4), (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    ],
    ids=["fmnist", "cifar10", "cifar100"],
)
def test_val_batch_is_normalised_float_with_the_data_sets_statistics(make, shape, mean, std, fmnist_dir, cifar10_dir, cifar100_dir):
    dm = make({"fmnist": fmnist_dir, "cifar10": cifar10_dir, "cifar100": cifar100_dir})
    assert (dm.in_chans, dm.image_size, dm.image_size) == shape
    raw, y = next(iter(dm.val_dataloader()))
    assert raw.dtype == torch.uint8 and raw.shape == (4, *shape) and y.dtype == torch.long
    x, y2 = dm.on_after_batch_transfer((raw, y), 0)
    assert x.dtype == torch.float32 and torch.equal(y, y2)
    c = shape[0] - 1
    expected = (raw[2, c, 5, 7].item() / 255.0 - mean[c]) / std[c]
    assert x[2, c, 5, 7].item() == pytest.approx(expected, abs=1e-5)


def test_in_memory_batches_are_fetched_whole_not_image_by_image(fmnist_dir, monkeypatch):
    dm = FashionMNISTDataModule(fmnist_dir, batch_size=8)

    def per_image(self, index):
        raise AssertionError("per-image __getitem__ called")

    monkeypatch.setattr(TensorImageDataset, "__getitem__", per_image)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28)


def test_fashion_mnist_found_in_torchvision_raw_layout(fmnist_raw_dir, fmnist_dir):
    a = FashionMNISTDataModule(fmnist_raw_dir)
    b = FashionMNISTDataModule(fmnist_dir)
    assert a.root == fmnist_raw_dir / "FashionMNIST" / "raw"
    assert torch.equal(a.load_split("test")[0], b.load_split("test")[0])


def test_fashion_mnist_found_through_env_var(fmnist_dir, no_default_data, monkeypatch):
    monkeypatch.setenv("ATTNZOO_DATA", str(fmnist_dir))
    assert FashionMNISTDataModule().root == fmnist_dir


@pytest.mark.skipif(not (REAL_FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_statistics_match_the_real_training_images():
    x = read_idx(REAL_FMNIST / "train-images-idx3-ubyte.gz")
    assert x.shape == (60000, 28, 28)
    counts = torch.bincount(x.flatten(), minlength=256).double()  # pixel histogram: exact moments, little memory
    value = torch.arange(256, dtype=torch.float64) / 255.0
    mean = (counts * value).sum() / counts.sum()
    std = ((counts * (value - mean) ** 2).sum() / counts.sum()).sqrt()
    assert mean.item() == pytest.approx(FashionMNISTDataModule.mean[0], abs=5e-4)
    assert std.item() == pytest.approx(FashionMNISTDataModule.std[0], abs=5e-4)


# -- missing data ----------------------------------------------------------------------------------
def test_missing_fashion_mnist_error_lists_every_folder_and_how_to_get_it(no_default_data, monkeypatch):
    monkeypatch.setenv("ATTNZOO_DATA", str(no_default_data / "env"))
    with pytest.raises(DataNotFoundError) as err:
        FashionMNISTDataModule()  # at construction: before any training
    msg = str(err.value)
    for folder in (no_default_data / "env", no_default_data / "xdg" / "attnzoo", no_default_data / "system" / "fashion-mnist"):
        assert str(folder) in msg and str(folder / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data.init_args.download true" in msg and "data_dir" in msg


def test_missing_cifar_with_explicit_data_dir_looks_only_there(tmp_path, no_default_data):
    with pytest.raises(FileNotFoundError) as err:
        CIFAR10DataModule(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg and "--data.init_args.download true" in msg
    assert "xdg" not in msg


def test_missing_image_folder_names_the_folders_tried(tmp_path, no_default_data, monkeypatch):
    monkeypatch.setenv("ATTNZOO_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError, match="imagenette2-160") as err:
        ImageFolderDataModule("imagenette2-160", num_workers=0)
    assert str(tmp_path / "env" / "imagenette2-160") in str(err.value)


# -- subsets and splits ----------------------------------------------------------------------------
def test_subset_keeps_n_images_per_class_reproducibly(cifar10_dir):
    def train(seed, subset):
        dm = CIFAR10DataModule(cifar10_dir, subset=subset, val_size=0, seed=seed, batch_size=1000)
        return _all(dm.train_dataloader())  # one batch, smaller than batch_size: nothing dropped

    x, y = train(0, 3)
    assert torch.bincount(y, minlength=10).tolist() == [3] * 10
    assert _rows(x) == _rows(train(0, 3)[0])
    assert _rows(x) != _rows(train(1, 3)[0])
    _, yf = train(0, 0.5)
    assert torch.bincount(yf, minlength=10).tolist() == [5] * 10


def test_subset_leaves_the_test_split_whole(cifar10_dir):
    dm = CIFAR10DataModule(cifar10_dir, subset=2, val_size=0.5)
    assert dm.split_sizes() == {"train": 10, "val": 10, "test": 40}


def test_val_split_is_disjoint_from_train_stratified_and_fixed_by_seed(fmnist_dir):
    def split(seed):
        dm = FashionMNISTDataModule(fmnist_dir, val_size=0.2, seed=seed, batch_size=1000)
        return _all(dm.train_dataloader()), _all(dm.val_dataloader())

    (xt, yt), (xv, yv) = split(0)
    assert len(xv) == 20 and len(xt) == 80
    assert torch.bincount(yv, minlength=10).tolist() == [2] * 10
    assert not _rows(xt) & _rows(xv)
    assert _rows(xv) == _rows(split(0)[1][0])
    assert _rows(xv) != _rows(split(1)[1][0])


def test_val_size_as_count_and_zero(fmnist_dir):
    assert FashionMNISTDataModule(fmnist_dir, val_size=7).split_sizes() == {"train": 93, "val": 7, "test": 40}
    dm = FashionMNISTDataModule(fmnist_dir, val_size=0)
    assert dm.split_sizes()["val"] == 40 and dm.val_set is dm.test_set


@pytest.mark.parametrize("kwargs, error", [({"subset": 0}, ValueError), ({"subset": 1.5}, ValueError),
                                           ({"val_size": 1.0}, ValueError), ({"subset": "10"}, TypeError)])
def test_bad_subset_or_val_size_is_rejected_at_construction(fmnist_dir, kwargs, error):
    with pytest.raises(error, match="subset|val_size"):
        FashionMNISTDataModule(fmnist_dir, **kwargs)


# -- augmentation ----------------------------------------------------------------------------------
def test_random_crop_flip_matches_a_per_image_reference():
    images = torch.randint(0, 256, (6, 3, 8, 10), dtype=torch.uint8)
    out = random_crop_flip(images, 2, True, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # same draws, in the documented order: rows, cols, flips
    oy, ox = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    for i in range(6):
        padded = torch.zeros(3, 12, 14, dtype=torch.uint8)
        padded[:, 2:10, 2:12] = images[i]
        ref = padded[:, oy[i] : oy[i] + 8, ox[i] : ox[i] + 10]
        assert torch.equal(out[i], ref.flip(2) if flip[i] else ref)


def test_augmentation_changes_training_batches_but_not_val_batches(cifar10_dir):
    dm = CIFAR10DataModule(cifar10_dir, batch_size=16)
    raw, y = next(iter(dm.train_dataloader()))
    plain = dm.normalize(raw)
    dm.trainer = SimpleNamespace(training=False, current_epoch=0, global_rank=0)
    assert torch.equal(dm.on_after_batch_transfer((raw, y), 0)[0], plain)
    _training(dm)
    aug = dm.on_after_batch_transfer((raw, y), 0)[0]
    assert aug.shape == plain.shape and not torch.equal(aug, plain)
    off = _training(CIFAR10DataModule(cifar10_dir, augment=False))
    assert torch.equal(off.on_after_batch_transfer((raw, y), 0)[0], plain)


def test_augmentation_is_reproducible_from_seed_epoch_and_batch(cifar10_dir):
    raw = CIFAR10DataModule(cifar10_dir).load_split("test")[0][:16]

    def draws(seed, epoch):
        dm = _training(CIFAR10DataModule(cifar10_dir, seed=seed), epoch)
        return [dm.on_after_batch_transfer((raw, None), 0)[0] for _ in range(2)]

    a, b = draws(0, 0), draws(0, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])  # batch index enters the seed
    assert not torch.equal(a[0], draws(0, 1)[0]) and not torch.equal(a[0], draws(1, 0)[0])


def test_shuffle_order_is_fixed_by_seed(fmnist_dir):
    def first(seed):
        return next(iter(FashionMNISTDataModule(fmnist_dir, batch_size=8, seed=seed).train_dataloader()))[1]

    assert torch.equal(first(3), first(3)) and not torch.equal(first(3), first(4))


def test_lightning_trainer_feeds_normalised_augmented_batches(monkeypatch):
    import lightning.pytorch as pl

    seen = {}

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 16 * 16, 3)

        def training_step(self, batch, i):
            seen["train"] = batch[0]
            return torch.nn.functional.cross_entropy(self.fc(batch[0].flatten(1)), batch[1])

        def validation_step(self, batch, i):
            seen["val"] = batch[0]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = SyntheticDataModule(num_classes=3, image_size=16, num_train=32, num_test=8, batch_size=8, augment=True, hflip=True)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Probe(), datamodule=dm)
    assert seen["train"].dtype == torch.float32 and seen["train"].shape == (8, 3, 16, 16)
    assert seen["val"].dtype == torch.float32 and abs(seen["val"].mean().item()) < 0.5


# -- ImageFolder -----------------------------------------------------------------------------------
def test_imagefolder_batches_and_test_split_from_val_folder(imagefolder_dir):
    dm = ImageFolderDataModule(imagefolder_dir, num_workers=0, image_size=32, batch_size=4, val_size=0.25)
    assert dm.num_classes == 4 and dm.in_chans == 3 and dm.test_root == imagefolder_dir / "val"
    assert dm.split_sizes() == {"train": 18, "val": 6, "test": 8}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.long
    v, _ = next(iter(dm.val_dataloader()))
    xn = dm.on_after_batch_transfer((v, None), 0)[0]
    assert xn.dtype == torch.float32 and xn[0, 0, 0, 0].item() == pytest.approx((v[0, 0, 0, 0].item() / 255 - 0.485) / 0.229, abs=1e-5)


def test_imagefolder_class_subset_by_list_by_count_and_cap(imagefolder_dir):
    dm = ImageFolderDataModule(imagefolder_dir, num_workers=0, classes=["fish", "cat"], max_per_class=4, val_size=0)
    assert dm.classes == ["fish", "cat"] and dm.num_classes == 2
    dm.setup()
    labels = [t for _, t in dm.train_set.samples]
    names = {Path(p).parent.name: t for p, t in dm.train_set.samples}
    assert names == {"fish": 0, "cat": 1} and sorted(labels) == [0] * 4 + [1] * 4
    assert ImageFolderDataModule(imagefolder_dir, num_workers=0, classes=2).classes == ["bird", "dog"]
    with pytest.raises(ValueError, match="did you mean 'cat'"):
        ImageFolderDataModule(imagefolder_dir, num_workers=0, classes=["cta"])


def test_imagefolder_val_split_disjoint_and_seeded(imagefolder_dir):
    def split(seed):
        dm = ImageFolderDataModule(imagefolder_dir, num_workers=0, val_size=0.5, seed=seed)
        dm.setup()
        return {p for p, _ in dm.train_set.samples}, {p for p, _ in dm.val_set.samples}

    train, val = split(0)
    assert len(val) == 12 and not train & val
    assert split(0)[1] == val and split(1)[1] != val


def test_imagefolder_cache_is_written_once_and_reused(imagefolder_dir, tmp_path, monkeypatch):
    kw = dict(num_workers=0, image_size=24, batch_size=4, cache_dir=str(tmp_path / "cache"), val_size=0.25)
    dm = ImageFolderDataModule(imagefolder_dir, **kw)
    dm.setup()
    assert dm.cache_file.is_file() and dm.cache_file.name.startswith("imagefolder-pool-27px-")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 27, 27) and x.dtype == torch.uint8
    out = _training(dm).on_after_batch_transfer((x, y), 0)[0]
    assert out.shape == (4, 3, 24, 24) and out.dtype == torch.float32
    v, _ = next(iter(dm.val_dataloader()))
    assert v.shape == (4, 3, 24, 24)

    from attnzoo.data import imagefolder

    def no_decode(self, index):
        raise AssertionError("decoded a JPEG although the cache exists")

    monkeypatch.setattr(imagefolder._FileDataset, "__getitem__", no_decode)
    again = ImageFolderDataModule(imagefolder_dir, **kw)
    again.setup()
    assert torch.equal(again.train_set.images, dm.train_set.images)


def test_batched_random_resized_crop_of_whole_image_is_identity():
    x = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    out = batched_random_resized_crop(x, 12, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(out, x.float(), atol=1e-3)


# -- synthetic -------------------------------------------------------------------------------------
def test_synthetic_signal_is_learnable_by_nearest_class_mean():
    dm = SyntheticDataModule(num_classes=4, in_chans=2, image_size=12, num_train=200, num_test=100, val_size=0)
    dm.setup()
    x, y = dm.train_set.images.float().flatten(1), dm.train_set.targets
    centroids = torch.stack([x[y == c].mean(0) for c in range(4)])
    xt, yt = dm.test_set.images.float().flatten(1), dm.test_set.targets
    acc = (torch.cdist(xt, centroids).argmin(1) == yt).float().mean().item()
    assert dm.test_set.images.shape == (100, 2, 12, 12) and acc > 0.9


# -- CLI signatures --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [FashionMNISTDataModule, CIFAR10DataModule, CIFAR100DataModule, ImageFolderDataModule, SyntheticDataModule])
def test_init_signature_parses_as_a_cli_section(cls):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    cfg = parser.parse_args(["--data.subset=0.5", "--data.val_size=100", "--data.batch_size=8"])
    assert cfg.data.subset == 0.5 and isinstance(cfg.data.val_size, int) and cfg.data.batch_size == 8
    for name in ("data_dir", "batch_size", "num_workers", "subset", "val_size", "seed", "augment", "download"):
        assert name in cfg.data
