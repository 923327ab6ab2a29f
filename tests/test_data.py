"""model.data: shapes, determinism, normalisation, augmentation and every bad-input path."""
from __future__ import annotations

import pickle
import re
from collections import Counter

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fixtures_data import (CIFAR10_NAMES, MODELNET_CLASSES, tar_folder, write_cifar10, write_cifar100,
                           write_cifar_pickle, write_class_folders, write_imagenet, write_modelnet_hdf5,
                           write_modelnet_resampled)
from model.data import DATASETS, DatasetError, DatasetSplits, build_dataset
from model.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from model.data.image_folder import load_class_folders
from model.data.imagenet import IMAGENET_MEAN, IMAGENET_STD

SMALL_SHAPES = dict(num_points=128, train_per_class=6, test_per_class=3)


def items(dataset, indices=None):
    return [dataset[i] for i in (range(len(dataset)) if indices is None else indices)]


def assert_unit_sphere(x: torch.Tensor) -> None:
    xyz = x[..., :3]
    assert torch.allclose(xyz.mean(dim=-2), torch.zeros(3), atol=1e-5)
    assert torch.allclose(xyz.norm(dim=-1).max(dim=-1).values, torch.ones(()), atol=1e-5)


# --- build_dataset itself ---------------------------------------------------------------------

def test_names():
    assert DATASETS == ("digits", "shapes", "cifar10", "cifar100", "imagenet", "modelnet40")


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'.*digits, shapes, cifar10"):
        build_dataset("mnist")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet", "modelnet40"])
def test_on_disk_datasets_need_root(name, tmp_path):
    with pytest.raises(DatasetError, match="needs root"):
        build_dataset(name)
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset(name, tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DatasetError, match="a_file.*not a directory"):
        build_dataset(name, tmp_path / "a_file")


def test_unknown_option_is_named():
    with pytest.raises(DatasetError, match="num_pionts.*takes: num_points"):
        build_dataset("shapes", num_pionts=64)


# --- digits -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return build_dataset("digits")


def test_digits_split(digits):
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    x, y = digits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and int(y) in range(10)
    # stratified: each class holds its share of the test set to within one image
    all_counts = Counter(digits.train.y.tolist()) + Counter(digits.test.y.tolist())
    test_counts = Counter(digits.test.y.tolist())
    for label, total in all_counts.items():
        assert abs(test_counts[label] - 0.2 * total) <= 1


def test_digits_standardised_on_train(digits):
    assert abs(float(digits.train.x.mean())) < 1e-4
    assert abs(float(digits.train.x.std()) - 1) < 1e-3
    assert abs(float(digits.test.x.mean())) < 0.1  # test uses the train statistics, so only close


def test_digits_split_is_fixed_whatever_the_seed(digits):
    other = build_dataset("digits", seed=123)
    assert torch.equal(other.test.x, digits.test.x) and torch.equal(other.train.y, digits.train.y)
    moved = build_dataset("digits", split_seed=1)
    assert not torch.equal(moved.test.x, digits.test.x)


def test_digits_augment_shifts_train_only(digits):
    augmented = build_dataset("digits", augment=True)
    torch.manual_seed(0)
    changed = [not torch.equal(augmented.train[i][0], digits.train[i][0]) for i in range(50)]
    assert 0 < sum(changed) < 50  # a shift of (0, 0) is one of the nine outcomes
    shifted = next(augmented.train[i][0] for i in range(50) if changed[i])
    assert shifted.shape == (1, 8, 8)
    # padding brings in blank paper: the standardised value of a raw 0 pixel
    assert float(shifted.min()) >= float(digits.train.x.min()) - 1e-6
    first_test = range(50)
    assert all(torch.equal(a[0], b[0])
               for a, b in zip(items(augmented.test, first_test), items(digits.test, first_test)))


# --- shapes -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes() -> DatasetSplits:
    return build_dataset("shapes", seed=3, **SMALL_SHAPES)


def test_shapes_layout(shapes):
    assert (len(shapes.train), len(shapes.test)) == (60, 30)
    assert shapes.num_classes == 10 and shapes.input_shape == (128, 3)
    assert len(set(shapes.class_names)) == 10
    x, y = shapes.train[0]
    assert x.shape == (128, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert Counter(shapes.train.y.tolist()) == {k: 6 for k in range(10)}
    assert_unit_sphere(shapes.train.x)
    assert_unit_sphere(shapes.test.x)


def test_shapes_default_size():
    splits = build_dataset("shapes", train_per_class=1, test_per_class=1)
    assert splits.input_shape == (1024, 3) and splits.train[0][0].shape == (1024, 3)


def test_shapes_deterministic(shapes):
    again = build_dataset("shapes", seed=3, **SMALL_SHAPES)
    assert torch.equal(again.train.x, shapes.train.x) and torch.equal(again.test.x, shapes.test.x)
    other = build_dataset("shapes", seed=4, **SMALL_SHAPES)
    assert not torch.equal(other.train.x, shapes.train.x)
    # train and test come from different streams: no test cloud repeats a train cloud
    assert not torch.equal(shapes.train.x[:30], shapes.test.x)
    assert torch.cdist(shapes.test.x.flatten(1), shapes.train.x.flatten(1)).min() > 1e-3


def test_shapes_test_split_does_not_depend_on_train_size(shapes):
    bigger = build_dataset("shapes", seed=3, num_points=128, train_per_class=9, test_per_class=3)
    assert torch.equal(bigger.test.x, shapes.test.x)


def test_shapes_augment_train_only(shapes):
    augmented = build_dataset("shapes", seed=3, augment=True, **SMALL_SHAPES)
    torch.manual_seed(0)
    x, _ = augmented.train[0]
    assert x.shape == (128, 3) and not torch.allclose(x, shapes.train.x[0], atol=1e-3)
    # rotation about y keeps heights up to scale and jitter
    ratio = x[:, 1].abs().max() / shapes.train.x[0][:, 1].abs().max()
    assert 0.7 < ratio < 1.35
    assert torch.equal(augmented.test[0][0], shapes.test[0][0])


def test_shapes_separable_by_radial_histogram():
    splits = build_dataset("shapes", seed=0, num_points=256, train_per_class=15, test_per_class=10)

    def features(x):  # rotation-invariant: histogram of distances from the centre
        return torch.stack([torch.histc(r, bins=16, min=0, max=1) for r in x.norm(dim=-1)]) / x.shape[1]

    train_f, test_f = features(splits.train.x), features(splits.test.x)
    centroids = torch.stack([train_f[splits.train.y == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(test_f, centroids).argmin(1) == splits.test.y).float().mean()
    assert accuracy > 0.6


def test_shapes_bad_option():
    with pytest.raises(DatasetError, match="num_points must be a positive integer"):
        build_dataset("shapes", num_points=0)


# --- CIFAR ------------------------------------------------------------------------------------

def test_cifar10_layout_and_normalisation(tmp_path):
    directory = write_cifar10(tmp_path)
    for root in (tmp_path, directory):  # the parent or the directory itself
        splits = build_dataset("cifar10", root)
        assert (len(splits.train), len(splits.test)) == (20, 4)
        assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
        assert splits.class_names == CIFAR10_NAMES
    x, y = splits.test[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = pickle.loads((directory / "test_batch").read_bytes(), encoding="bytes")
    pixels = torch.from_numpy(raw[b"data"][1].reshape(3, 32, 32)).float() / 255
    expected = (pixels - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)
    assert int(y) == raw[b"labels"][1]
    # train order: data_batch_1 .. data_batch_5
    last = pickle.loads((directory / "data_batch_5").read_bytes(), encoding="bytes")
    assert int(splits.train[19][1]) == last[b"labels"][3]


def test_cifar_pickled_by_python3_also_loads(tmp_path):
    directory = write_cifar10(tmp_path)
    batch = pickle.loads((directory / "test_batch").read_bytes(), encoding="bytes")
    (directory / "test_batch").write_bytes(pickle.dumps(batch, protocol=5))  # numpy._core, _frombuffer
    x, _ = build_dataset("cifar10", tmp_path).test[3]
    assert x.shape == (3, 32, 32)


def test_cifar10_augment_train_only(tmp_path):
    write_cifar10(tmp_path)
    plain, augmented = build_dataset("cifar10", tmp_path), build_dataset("cifar10", tmp_path, augment=True)
    torch.manual_seed(0)
    changed = [not torch.equal(augmented.train[i][0], plain.train[i][0]) for i in range(20)]
    assert sum(changed) >= 15
    assert augmented.train[0][0].shape == (3, 32, 32)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(items(augmented.test), items(plain.test)))


def test_cifar100(tmp_path):
    write_cifar100(tmp_path)
    splits = build_dataset("cifar100", tmp_path)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (8, 4, 100)
    assert splits.class_names[:2] == ["fine_0", "fine_1"]
    x, y = next(iter(DataLoader(splits.train, batch_size=8)))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,) and y.dtype == torch.int64


def test_cifar_wrong_layout(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        build_dataset("cifar10", tmp_path)
    directory = write_cifar10(tmp_path)
    (directory / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3.*missing"):
        build_dataset("cifar10", tmp_path)


# --- class folders (the CIFAR-10 JPEG archive's layout) ------------------------------------------

def _normalised(path, mean, std):
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).copy()).float() / 255
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_cifar10_from_class_folders(tmp_path, packed):
    root = write_class_folders(tmp_path / "cifar", train_per_class=2, test_per_class=1)
    source = tar_folder(root, tmp_path / "cifar10-jpeg.tar.gz") if packed else root
    splits = build_dataset("cifar10", source, cache_dir=str(tmp_path / "cache"))
    assert (len(splits.train), len(splits.test), splits.num_classes) == (20, 10, 10)
    assert splits.class_names == sorted(CIFAR10_NAMES) and splits.input_shape == (3, 32, 32)
    # sorted class folders give the labels, files in name order within a class
    x, y = splits.test[3]
    assert int(y) == 3
    expected = _normalised(root / "test" / sorted(CIFAR10_NAMES)[3] / "0000.png", CIFAR10_MEAN, CIFAR10_STD)
    assert torch.allclose(x, expected, atol=1e-6)
    x, y = splits.train[5]
    assert int(y) == 2
    assert torch.allclose(x, _normalised(root / "train" / sorted(CIFAR10_NAMES)[2] / "0001.png",
                                         CIFAR10_MEAN, CIFAR10_STD), atol=1e-6)
    augmented = build_dataset("cifar10", source, augment=True, cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(0)
    assert sum(not torch.equal(augmented.train[i][0], splits.train[i][0]) for i in range(20)) >= 15
    assert all(torch.equal(a[0], b[0]) for a, b in zip(items(augmented.test), items(splits.test)))


def test_class_folders_decode_once(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "cifar", classes=["a", "b"], fmt="JPEG")
    cache = tmp_path / "cache"
    first, classes = load_class_folders(root, cache_dir=cache)
    assert classes == ["a", "b"] and len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds this source")
    monkeypatch.setattr("model.data.image_folder.decode_class_folders", no_decoding)
    again, _ = load_class_folders(root, cache_dir=cache)
    assert all(np.array_equal(first[s][0], again[s][0]) and np.array_equal(first[s][1], again[s][1])
               for s in ("train", "test"))
    # a changed source is a new cache entry, not a stale hit
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "a" / "0002.jpg")
    with pytest.raises(AssertionError, match="decoded again"):
        load_class_folders(root, cache_dir=cache)


def test_class_folders_bad_input_names_the_file(tmp_path):
    cache = str(tmp_path / "cache")
    root = write_class_folders(tmp_path / "missing", classes=["a", "b"])
    for f in (root / "test" / "b").iterdir():
        f.unlink()
    (root / "test" / "b").rmdir()
    with pytest.raises(DatasetError, match="train/ and test/ have different class folders.*b"):
        load_class_folders(root, cache_dir=cache)

    root = write_class_folders(tmp_path / "unreadable", classes=["a", "b"])
    (root / "train" / "b" / "0001.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"cannot decode image .*train/b/0001\.png"):
        load_class_folders(root, cache_dir=cache)

    root = write_class_folders(tmp_path / "size", classes=["a", "b"])
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(root / "test" / "a" / "0000.png")
    with pytest.raises(DatasetError, match=r"test/a/0000\.png.* is 28x28, expected 32x32"):
        load_class_folders(root, cache_dir=cache)

    root = write_class_folders(tmp_path / "empty", classes=["a", "b"], test_per_class=0)
    with pytest.raises(DatasetError, match=r"class folder .*test/a.* holds no images"):
        load_class_folders(root, cache_dir=cache)

    root = write_class_folders(tmp_path / "nosplit", classes=["a"])
    for f in (root / "test" / "a").iterdir():
        f.unlink()
    (root / "test" / "a").rmdir()
    with pytest.raises(DatasetError, match="the 'test' split holds no images"):
        load_class_folders(tar_folder(root, tmp_path / "nosplit.tar.gz"), cache_dir=cache)

    archive = tar_folder(write_class_folders(tmp_path / "trunc", classes=["a"]), tmp_path / "trunc.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DatasetError, match="trunc.tar.gz.*truncated or corrupt"):
        load_class_folders(archive, cache_dir=cache)

    with pytest.raises(DatasetError, match="has 1 class folders, expected 10"):
        build_dataset("cifar10", write_class_folders(tmp_path / "one", classes=["a"]), cache_dir=cache)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_cifar_corrupt_pickle(tmp_path, damage):
    directory = write_cifar10(tmp_path)
    path = directory / "data_batch_2"
    content = path.read_bytes()
    path.write_bytes({"truncate": content[: len(content) // 2], "garbage": b"\x93NUMPY not a pickle",
                      "empty": b""}[damage])
    with pytest.raises(DatasetError, match="cannot unpickle.*data_batch_2") as info:
        build_dataset("cifar10", tmp_path)
    assert info.value.__cause__ is not None


def test_cifar_pickle_with_code_is_refused(tmp_path):
    directory = write_cifar10(tmp_path)

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (directory / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(DatasetError, match="test_batch.*refusing to load builtins.print"):
        build_dataset("cifar10", tmp_path)


def test_cifar_missing_key_wrong_shape_and_bad_label(tmp_path):
    directory = write_cifar10(tmp_path)
    good = pickle.loads((directory / "data_batch_4").read_bytes(), encoding="bytes")

    write_cifar_pickle(directory / "data_batch_4", {k: v for k, v in good.items() if k != b"labels"})
    with pytest.raises(DatasetError, match="data_batch_4.*no key 'labels'"):
        build_dataset("cifar10", tmp_path)

    write_cifar_pickle(directory / "data_batch_4", {**good, b"data": good[b"data"][:, :3000]})
    with pytest.raises(DatasetError, match=r"data_batch_4.*\(4, 3000\).*3072"):
        build_dataset("cifar10", tmp_path)

    write_cifar_pickle(directory / "data_batch_4", {**good, b"labels": good[b"labels"][:3]})
    with pytest.raises(DatasetError, match="data_batch_4.*4 images"):
        build_dataset("cifar10", tmp_path)

    write_cifar_pickle(directory / "data_batch_4", {**good, b"labels": [1, 2, 10, 3]})
    with pytest.raises(DatasetError, match=r"data_batch_4.*label 10 at index 2 is outside \[0, 10\)"):
        build_dataset("cifar10", tmp_path)

    write_cifar_pickle(directory / "data_batch_4", [1, 2, 3])
    with pytest.raises(DatasetError, match="data_batch_4.*list, expected a dict"):
        build_dataset("cifar10", tmp_path)


def test_cifar100_bad_label_and_meta(tmp_path):
    directory = write_cifar100(tmp_path)
    good = pickle.loads((directory / "test").read_bytes(), encoding="bytes")
    write_cifar_pickle(directory / "test", {**good, b"fine_labels": [0, -1, 5, 7]})
    with pytest.raises(DatasetError, match=r"'.*test'.*label -1 at index 1"):
        build_dataset("cifar100", tmp_path)
    write_cifar_pickle(directory / "test", good)
    (directory / "meta").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="cannot unpickle.*meta"):
        build_dataset("cifar100", tmp_path)


# --- ImageNet ---------------------------------------------------------------------------------

IMAGENET_OPTIONS = dict(image_size=24, resize=28)


def test_imagenet_layout(tmp_path):
    write_imagenet(tmp_path)
    splits = build_dataset("imagenet", tmp_path, **IMAGENET_OPTIONS)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (6, 6, 3)
    assert splits.class_names == ["n01440764", "n01443537", "n01484850"]
    assert splits.input_shape == (3, 24, 24)
    x, y = splits.test[5]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y == 2
    x, y = next(iter(DataLoader(splits.train, batch_size=6)))
    assert x.shape == (6, 3, 24, 24) and y.tolist() == [0, 0, 1, 1, 2, 2]


def test_imagenet_normalisation_and_resize(tmp_path):
    write_imagenet(tmp_path)
    # a solid-colour wide image: after resize + centre crop every pixel is that colour
    Image.new("RGB", (90, 30), (200, 100, 50)).save(tmp_path / "val" / "n01440764" / "a_solid.JPEG")
    splits = build_dataset("imagenet", tmp_path, **IMAGENET_OPTIONS)
    x, _ = splits.test[0]
    colour = torch.tensor([200, 100, 50]) / 255
    expected = (colour - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=0.03)


def test_imagenet_augment_train_only(tmp_path):
    write_imagenet(tmp_path)
    plain = build_dataset("imagenet", tmp_path, **IMAGENET_OPTIONS)
    augmented = build_dataset("imagenet", tmp_path, augment=True, **IMAGENET_OPTIONS)
    torch.manual_seed(0)
    assert augmented.train[0][0].shape == (3, 24, 24)
    assert not torch.equal(augmented.train[0][0], plain.train[0][0])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(items(augmented.test), items(plain.test)))


def test_imagenet_bad_layouts(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "train"))):
        build_dataset("imagenet", tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="train'? has no class folders"):
        build_dataset("imagenet", tmp_path)


def test_imagenet_empty_class_and_mismatched_val(tmp_path):
    write_imagenet(tmp_path)
    for f in (tmp_path / "val" / "n01443537").iterdir():
        f.unlink()
    (tmp_path / "val" / "n01443537" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="n01443537.*holds no images"):
        build_dataset("imagenet", tmp_path)
    (tmp_path / "val" / "n99999999").mkdir()
    with pytest.raises(DatasetError, match="different class folders.*n99999999"):
        build_dataset("imagenet", tmp_path)


def test_imagenet_unreadable_image_named_at_load(tmp_path):
    write_imagenet(tmp_path)
    path = tmp_path / "train" / "n01484850" / "n01484850_train_1.JPEG"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    splits = build_dataset("imagenet", tmp_path, **IMAGENET_OPTIONS)  # not read yet
    splits.train[4]
    with pytest.raises(DatasetError, match="cannot decode image.*n01484850_train_1.JPEG") as info:
        splits.train[5]
    assert info.value.__cause__ is not None


# --- ModelNet40 -------------------------------------------------------------------------------

def test_modelnet_resampled(tmp_path):
    directory = write_modelnet_resampled(tmp_path)
    splits = build_dataset("modelnet40", tmp_path, num_points=32)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (6, 3, 3)
    assert splits.class_names == MODELNET_CLASSES and splits.input_shape == (32, 3)
    x, y = splits.train[2]
    assert x.shape == (32, 3) and x.dtype == torch.float32 and int(y) == 1  # night_stand
    assert_unit_sphere(x)
    # the first 32 rows of the file, normalised
    raw = np.loadtxt(directory / "night_stand" / "night_stand_0004.txt", delimiter=",")[:32, :3]
    raw = raw - raw.mean(0)
    assert np.allclose(x.numpy(), raw / np.linalg.norm(raw, axis=1).max(), atol=1e-5)

    with_normals = build_dataset("modelnet40", directory, num_points=64, use_normals=True)
    x6, _ = with_normals.test[0]
    assert with_normals.input_shape == (64, 6) and x6.shape == (64, 6)
    assert torch.allclose(x6[:, 3:].norm(dim=1), torch.ones(64), atol=1e-4)  # normals untouched


def test_modelnet_augment_train_only(tmp_path):
    write_modelnet_resampled(tmp_path)
    plain = build_dataset("modelnet40", tmp_path, num_points=32, use_normals=True)
    augmented = build_dataset("modelnet40", tmp_path, num_points=32, use_normals=True, augment=True)
    torch.manual_seed(0)
    x, _ = augmented.train[0]
    assert not torch.allclose(x[:, :3], plain.train[0][0][:, :3], atol=1e-3)
    assert torch.allclose(x[:, 3:].norm(dim=1), torch.ones(32), atol=1e-4)  # normals only rotated
    assert torch.equal(augmented.test[0][0], plain.test[0][0])


def test_modelnet_bad_row_names_file_and_line(tmp_path):
    directory = write_modelnet_resampled(tmp_path)
    path = directory / "chair" / "chair_0007.txt"
    lines = path.read_text().splitlines()
    lines[4] = "0.1,0.2,oops,0,0,1"
    path.write_text("\n".join(lines) + "\n")
    splits = build_dataset("modelnet40", tmp_path, num_points=32)
    with pytest.raises(DatasetError, match="chair_0007.txt' line 5: cannot parse"):
        splits.train[4]
    lines[4] = "0.1,0.2,0.3"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="chair_0007.txt' line 5: 3 values, expected 6"):
        splits.train[4]
    with pytest.raises(DatasetError, match="airplane_0001.txt' has 64 points, fewer than num_points=100"):
        build_dataset("modelnet40", tmp_path, num_points=100).train[0]


def test_modelnet_index_problems(tmp_path):
    directory = write_modelnet_resampled(tmp_path)
    (directory / "airplane" / "airplane_0002.txt").unlink()
    with pytest.raises(DatasetError, match="modelnet40_train.txt' line 2 names 'airplane_0002'.*missing"):
        build_dataset("modelnet40", tmp_path)
    (directory / "modelnet40_train.txt").write_text("airplane_0001\nsofa_0001\n")
    with pytest.raises(DatasetError, match="modelnet40_train.txt' line 2: 'sofa_0001' is not of a class"):
        build_dataset("modelnet40", tmp_path)
    (directory / "modelnet40_test.txt").unlink()
    (directory / "modelnet40_train.txt").write_text("airplane_0001\n")
    with pytest.raises(DatasetError, match="modelnet40_test.txt.*missing"):
        build_dataset("modelnet40", tmp_path)


def test_modelnet_wrong_layout(tmp_path):
    (tmp_path / "modelnet40_normal_resampled").mkdir()
    with pytest.raises(DatasetError,
                       match="neither modelnet40_normal_resampled/.*modelnet40_shape_names.txt"):
        build_dataset("modelnet40", tmp_path)


def test_modelnet_hdf5(tmp_path):
    directory = write_modelnet_hdf5(tmp_path)
    for root in (tmp_path, directory):
        splits = build_dataset("modelnet40", root, num_points=100)
        assert (len(splits.train), len(splits.test), splits.num_classes) == (6, 3, 3)
        assert splits.input_shape == (100, 3) and splits.class_names == MODELNET_CLASSES
    x, y = splits.train[4]
    assert x.shape == (100, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert_unit_sphere(splits.train.x)
    with h5py.File(directory / "ply_data_train1.h5") as f:  # second file, second cloud
        raw = f["data"][1, :100]
        assert int(y) == int(f["label"][1, 0])
    raw = raw - raw.mean(0)
    assert np.allclose(x.numpy(), raw / np.linalg.norm(raw, axis=1).max(), atol=1e-5)
    with pytest.raises(DatasetError, match="has no normals"):
        build_dataset("modelnet40", tmp_path, use_normals=True)
    with pytest.raises(DatasetError, match=r"ply_data_train0.h5.*\(3, 2048, 3\).*num_points=4096"):
        build_dataset("modelnet40", tmp_path, num_points=4096)


def test_modelnet_hdf5_corrupt(tmp_path):
    directory = write_modelnet_hdf5(tmp_path)
    path = directory / "ply_data_test0.h5"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 3])
    with pytest.raises(DatasetError, match="cannot read HDF5 file.*ply_data_test0.h5") as info:
        build_dataset("modelnet40", tmp_path)
    assert info.value.__cause__ is not None


def test_modelnet_hdf5_missing_key_and_bad_label(tmp_path):
    directory = write_modelnet_hdf5(tmp_path)
    with h5py.File(directory / "ply_data_train1.h5", "a") as f:
        del f["label"]
    with pytest.raises(DatasetError, match="ply_data_train1.h5' has no dataset 'label'"):
        build_dataset("modelnet40", tmp_path)
    with h5py.File(directory / "ply_data_train1.h5", "a") as f:
        f.create_dataset("label", data=np.array([[0], [3], [1]], np.uint8))
    with pytest.raises(DatasetError, match=r"ply_data_train1.h5'.*label 3 at index 1 is outside \[0, 3\)"):
        build_dataset("modelnet40", tmp_path)


# --- all datasets -----------------------------------------------------------------------------

def test_datasets_pickle_for_spawned_workers(tmp_path):
    # DataLoader workers under spawn/forkserver receive the dataset by pickling.
    write_cifar10(tmp_path)
    for splits in (build_dataset("cifar10", tmp_path, augment=True),
                   build_dataset("digits", augment=True),
                   build_dataset("shapes", augment=True, **SMALL_SHAPES)):
        clone = pickle.loads(pickle.dumps(splits.train))
        assert clone[0][0].shape == splits.train[0][0].shape
