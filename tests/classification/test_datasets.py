import gzip
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from paddle_suite.classification import datasets
from paddle_suite.classification.datasets import DatasetFormatError
from paddle_suite.data import DatasetNotFound


# ------------------------------------------------------------------------------ real data
def test_cifar10_jpeg_tree_counts_labels_and_classes(cifar10):
    assert set(cifar10) == {"train", "test"}
    train, test = cifar10["train"], cifar10["test"]
    assert train.images.shape == (50_000, 32, 32, 3) and test.images.shape == (10_000, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.class_names == datasets.CIFAR10_CLASSES  # sorted folder names = the canonical order
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert (train.class_counts() == 5_000).all() and (test.class_counts() == 1_000).all()
    # real photographs, not a blank decode: pixel statistics of natural images
    sample = np.asarray(train.images[::500], dtype=np.float64)
    assert 90 < sample.mean() < 160 and sample.std() > 40


def test_cifar10_cache_has_manifest_of_the_archive(cifar10):
    archive = datasets.find_cifar10_archive()
    manifest = json.loads((datasets.cache_root() / "cifar10-jpeg" / "manifest.json").read_text())
    assert manifest["source"] == str(archive.resolve())
    assert manifest["size"] == os.stat(archive).st_size
    assert manifest["splits"] == {"train": 50_000, "test": 10_000}


def test_fashion_mnist_counts_and_labels(fashion_mnist):
    train, test = fashion_mnist["train"], fashion_mnist["test"]
    assert train.images.shape == (60_000, 28, 28, 1) and test.images.shape == (10_000, 28, 28, 1)
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert (train.class_counts() == 6_000).all() and (test.class_counts() == 1_000).all()
    assert train.class_names[9] == "Ankle boot"


def test_mnist_from_the_wheel(mnist):
    assert [len(mnist[s]) for s in ("train", "valid", "test")] == [50_000, 10_000, 10_000]
    train = mnist["train"]
    assert train.images.shape[1:] == (28, 28, 1) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and set(np.unique(train.labels)) == set(range(10))


# ------------------------------------------------------------------------------ archive cache
def _write_tree_archive(path, images_by_member):
    with tarfile.open(path, "w:xz") as tar:
        for name, array in images_by_member.items():
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")  # lossless, so pixels can be compared
            info = tarfile.TarInfo(name)
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)


def _tiny_tree(value):
    rng = np.random.default_rng(value)
    return {f"tiny/{split}/{cls}/{i:04d}.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            for split in ("train", "test") for cls in ("b_cls", "a_cls") for i in range(3)}


def test_archive_is_decoded_once_and_again_when_it_changes(tmp_path, monkeypatch):
    archive, cache = tmp_path / "tiny.tar.xz", tmp_path / "cache"
    members = _tiny_tree(1)
    _write_tree_archive(archive, members)
    splits = datasets.load_jpeg_tree_archive(archive, cache, "tiny")
    assert splits["train"].class_names == ("a_cls", "b_cls") and len(splits["test"]) == 6
    # rows are in (class, file) order with the right pixels and labels
    np.testing.assert_array_equal(splits["train"].images[0], members["tiny/train/a_cls/0000.png"])
    np.testing.assert_array_equal(splits["train"].images[5], members["tiny/train/b_cls/0002.png"])
    assert list(splits["train"].labels) == [0, 0, 0, 1, 1, 1]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the archive did not change")

    monkeypatch.setattr(datasets, "decode_archive", no_decoding)
    datasets.load_jpeg_tree_archive(archive, cache, "tiny")
    monkeypatch.undo()

    changed = _tiny_tree(2)
    _write_tree_archive(archive, changed)
    os.utime(archive, ns=(1, 1))  # also a different mtime, whatever the file system's resolution
    again = datasets.load_jpeg_tree_archive(archive, cache, "tiny")
    np.testing.assert_array_equal(again["train"].images[0], changed["tiny/train/a_cls/0000.png"])
    assert json.loads((cache / "manifest.json").read_text())["mtime_ns"] == 1


def test_archive_with_a_stray_member_names_it(tmp_path):
    members = _tiny_tree(1)
    members["tiny/train/notes.png"] = members.pop("tiny/train/a_cls/0000.png")
    _write_tree_archive(tmp_path / "bad.tar.xz", members)
    with pytest.raises(DatasetFormatError, match="tiny/train/notes.png"):
        datasets.load_jpeg_tree_archive(tmp_path / "bad.tar.xz", tmp_path / "cache", "tiny")
    assert not (tmp_path / "cache" / "manifest.json").exists()


# ------------------------------------------------------------------------------ IDX files
def _write_idx(path, magic, array):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_round_trip_and_errors(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "ok.gz", datasets.IDX_IMAGES_MAGIC, images)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "ok.gz", datasets.IDX_IMAGES_MAGIC), images)
    with pytest.raises(DatasetFormatError, match=r"ok.gz: IDX magic number 0x00000803, expected 0x00000801"):
        datasets.read_idx(tmp_path / "ok.gz", datasets.IDX_LABELS_MAGIC)
    with gzip.open(tmp_path / "short.gz", "wb") as handle:
        handle.write(datasets.IDX_IMAGES_MAGIC.to_bytes(4, "big") + b"\0\0\0\2\0\0\0\3\0\0\0\4" + b"\0" * 10)
    with pytest.raises(DatasetFormatError, match=r"short.gz: 26 bytes, but its header \(dimensions \[2, 3, 4\]\)"):
        datasets.read_idx(tmp_path / "short.gz", datasets.IDX_IMAGES_MAGIC)
    (tmp_path / "plain.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetFormatError, match="plain.gz: not a readable gzip file"):
        datasets.read_idx(tmp_path / "plain.gz", datasets.IDX_IMAGES_MAGIC)


def test_fashion_mnist_missing_names_the_path_and_the_package(tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        datasets.load_fashion_mnist(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and "dataset-fashion-mnist" in str(err.value)


# ------------------------------------------------------------------------------ MNIST pickle safety
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_mnist_reader_refuses_anything_but_numpy_arrays(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(_Evil(), handle)
    with pytest.raises(DatasetFormatError, match="refusing to load posix.system|refusing to load os.system"):
        datasets.load_mnist(path, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "mnist" / "manifest.json").exists()


# ------------------------------------------------------------------------------ image folders
def test_image_folder_is_lazy_and_maps_val_to_valid(tmp_path, caplog):
    sizes = {"train": [(10, 12), (7, 9)], "val": [(5, 6)]}
    for split, shapes in sizes.items():
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i, (h, w) in enumerate(shapes):
                pixels = np.full((h, w, 3), 40 * i + len(cls), np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "cat" / "Thumbs.db").write_bytes(b"x")
    splits = datasets.load_image_folder(tmp_path)
    assert set(splits) == {"train", "valid"} and splits["train"].lazy
    assert splits["train"].class_names == ("cat", "dog") and list(splits["train"].labels) == [0, 0, 1, 1]
    assert "Thumbs.db" in caplog.text
    loaded = splits["train"].load([1, 0])
    assert loaded[0].shape == (7, 9, 3) and loaded[1].shape == (10, 12, 3)

    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(DatasetFormatError, match="class 'bird' is not a class of"):
        datasets.load_image_folder(tmp_path)


# ------------------------------------------------------------------------------ paddle's CIFAR-10 reader
def test_original_cifar10_archive_through_paddle(tmp_path):
    rng = np.random.default_rng(0)
    archive = tmp_path / "cifar-10-python.tar.gz"
    batches = {}
    with tarfile.open(archive, "w:gz") as tar:
        for name, n in (("data_batch_1", 4), ("test_batch", 3)):
            images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            labels = list(rng.integers(0, 10, n))
            batches[name] = (images, labels)
            payload = pickle.dumps({b"data": images.transpose(0, 3, 1, 2).reshape(n, -1), b"labels": labels})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    splits = datasets.load_dataset("cifar10", str(archive))
    np.testing.assert_array_equal(splits["train"].images, batches["data_batch_1"][0])
    np.testing.assert_array_equal(splits["test"].labels, batches["test_batch"][1])
