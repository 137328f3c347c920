"""Deterministic augmentation: every random choice is a function of (seed, epoch, sample index).

Per-sample randomness comes from a counter-based generator (``SampleKeys``): a splitmix64 hash of
(seed, epoch, operation position, sample index, draw number), computed for a whole batch in one
numpy expression. A sample's augmentation therefore does not depend on which batch, worker or
process handles it, nor on what ran before, which is what makes resume exact and lets any number
of loader workers produce identical batches.

Per-sample operations take uint8 ``[B, H, W, C]`` batches (``RandomResizedCrop`` and
``ResizeCenterCrop`` also take lists of differently sized images, as lazy image folders give) and
return uint8 batches; ``Normalize`` turns them into float32 NCHW; ``RandomErasing`` works on that.
Crops with padding, flips, erasing and normalisation are whole-batch numpy; so are RandAugment's
lookup-table operations (autocontrast, equalize, solarize, posterize: equal to PIL's, tested),
applied to all images that drew them at once. Resizing and RandAugment's other operations use
PIL per image (C code per call).

Readings of the papers where they leave details open:

* RandAugment (Cubuk et al. 2020): ``num_ops`` operations drawn uniformly with replacement from
  14 (identity, autocontrast, equalize, rotate, solarize, color, posterize, contrast, brightness,
  sharpness, shear x/y, translate x/y), each at the one global magnitude ``m`` of 10 levels;
  signed operations get a random sign. Ranges at ``m = 10``: rotate 30 degrees, shear 0.3,
  translate 0.45 of the image side, enhancement factors 1 +- 0.9, solarize threshold 0, posterize
  4 bits (timm's ranges). Areas uncovered by geometric operations are filled with grey (128).
* Random erasing (Zhong et al. 2020): probability ``p``, area fraction in ``scale``, aspect ratio
  log-uniform in ``ratio``, up to 10 attempts to fit the box; the box is filled with 0 after
  normalisation, i.e. the data set's mean colour (PaddleClas' default ``const`` mode).
* Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) act on a whole batch, seeded by
  (seed, epoch, batch index): lambda ~ Beta(alpha, alpha), partners by a random permutation of the
  batch, one CutMix box per batch with lambda corrected to the pasted area; with both alphas set,
  each batch uses one of them with probability 1/2 (as timm does). Targets are label-smoothed
  one-hot vectors mixed with the same lambda, so each row sums to 1.
"""
import math

import numpy as np
from PIL import Image, ImageEnhance

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FILL = 128


# ------------------------------------------------------------------------------ randomness
def _mix64(x):
    """splitmix64's finaliser on a uint64 array (wrap-around arithmetic is intended)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _fold(state, value):
    return _mix64(state ^ (np.asarray(value, dtype=np.uint64) + _GOLDEN))


class SampleKeys:
    """Uniform numbers for each sample of a batch, keyed by (seed, epoch, stream, index, draw)."""

    def __init__(self, seed, epoch, indices, _state=None):
        self.indices = np.asarray(indices, dtype=np.int64)
        if _state is None:
            _state = _fold(_fold(np.array([int(seed) % 2**64], dtype=np.uint64), int(epoch) % 2**64), 0)
        self._state = _state

    def for_op(self, position):
        """Independent keys for the operation at ``position`` of a pipeline."""
        return SampleKeys(None, None, self.indices, _fold(self._state, position + 1))

    def uniform(self, count=1):
        """``[B, count]`` float64 in [0, 1)."""
        per_sample = _fold(self._state, self.indices.astype(np.uint64))[:, None]
        bits = _fold(per_sample, np.arange(count, dtype=np.uint64)[None, :])
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ------------------------------------------------------------------------------ pipeline
class Compose:
    """Apply operations in order; ``__call__(images, seed, epoch, indices)``."""

    def __init__(self, ops):
        self.ops = list(ops)

    def __call__(self, images, seed, epoch, indices):
        keys = SampleKeys(seed, epoch, indices)
        for position, op in enumerate(self.ops):
            images = op(images, keys.for_op(position))
        return images

    def __repr__(self):
        return "Compose(" + ", ".join(type(op).__name__ for op in self.ops) + ")"


def _require_batch(images, op):
    if isinstance(images, list):
        raise TypeError(f"{op} needs same-size images: put ResizeCenterCrop or RandomResizedCrop first")
    return images


def _to_pil(array):
    return Image.fromarray(array[..., 0], "L") if array.shape[2] == 1 else Image.fromarray(array)


def _from_pil(image, channels):
    array = np.asarray(image)
    return array[..., None] if channels == 1 else array


# ------------------------------------------------------------------------------ geometry
class RandomCropPad:
    """Zero-pad by ``padding`` pixels, then crop ``size`` (default: the input size) at a random place."""

    def __init__(self, padding=4, size=None):
        self.padding, self.size = int(padding), size

    def __call__(self, images, keys):
        images = _require_batch(images, "RandomCropPad")
        b, h, w, _ = images.shape
        size_h, size_w = (self.size, self.size) if self.size else (h, w)
        p = self.padding
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        u = keys.uniform(2)
        top = (u[:, 0] * (h + 2 * p - size_h + 1)).astype(np.int64)
        left = (u[:, 1] * (w + 2 * p - size_w + 1)).astype(np.int64)
        rows = top[:, None, None] + np.arange(size_h)[None, :, None]
        cols = left[:, None, None] + np.arange(size_w)[None, None, :]
        return padded[np.arange(b)[:, None, None], rows, cols]


class HorizontalFlip:
    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, images, keys):
        images = _require_batch(images, "HorizontalFlip")
        flip = keys.uniform(1)[:, 0] < self.p
        out = images.copy()
        out[flip] = images[flip, :, ::-1]
        return out


class RandomResizedCrop:
    """A crop of random area fraction (``scale``) and aspect ratio (log-uniform in ``ratio``), resized."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
        self.size, self.scale, self.ratio, self.attempts = int(size), tuple(scale), tuple(ratio), attempts

    def boxes(self, heights, widths, keys):
        """``[B, 4]`` (left, top, right, bottom) crop boxes."""
        n = self.attempts
        u = keys.uniform(2 * n + 2)
        heights, widths = np.asarray(heights, float)[:, None], np.asarray(widths, float)[:, None]
        area = heights * widths * (self.scale[0] + u[:, :n] * (self.scale[1] - self.scale[0]))
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = np.exp(log_lo + u[:, n:2 * n] * (log_hi - log_lo))
        crop_w, crop_h = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
        fits = (crop_w >= 1) & (crop_h >= 1) & (crop_w <= widths) & (crop_h <= heights)
        first = fits.argmax(axis=1)
        rows = np.arange(len(first))
        w, h = crop_w[rows, first], crop_h[rows, first]
        # no attempt fits: the whole image cropped to the nearest allowed aspect ratio (torchvision's fallback)
        whole_aspect = widths[:, 0] / heights[:, 0]
        fb_w = np.where(whole_aspect < self.ratio[0], widths[:, 0],
                        np.where(whole_aspect > self.ratio[1], np.round(heights[:, 0] * self.ratio[1]), widths[:, 0]))
        fb_h = np.where(whole_aspect < self.ratio[0], np.round(widths[:, 0] / self.ratio[0]), heights[:, 0])
        none_fit = ~fits.any(axis=1)
        w, h = np.where(none_fit, fb_w, w), np.where(none_fit, fb_h, h)
        left = np.where(none_fit, (widths[:, 0] - w) // 2, np.floor(u[:, 2 * n] * (widths[:, 0] - w + 1)))
        top = np.where(none_fit, (heights[:, 0] - h) // 2, np.floor(u[:, 2 * n + 1] * (heights[:, 0] - h + 1)))
        return np.stack([left, top, left + w, top + h], axis=1)

    def __call__(self, images, keys):
        heights = [im.shape[0] for im in images]
        widths = [im.shape[1] for im in images]
        boxes = self.boxes(heights, widths, keys)
        return _resize_boxes(images, boxes, self.size)


class ResizeCenterCrop:
    """Evaluation view: the central square of side ``crop_fraction`` x the shorter side, resized to ``size``.

    Equivalent to resizing the shorter side to ``size / crop_fraction`` and centre-cropping ``size``
    (the usual ImageNet evaluation, 0.875 = 224/256), with one resampling instead of two.
    """

    def __init__(self, size, crop_fraction=0.875):
        self.size, self.crop_fraction = int(size), float(crop_fraction)

    def __call__(self, images, keys):
        boxes = []
        for image in images:
            h, w = image.shape[:2]
            side = min(h, w) * self.crop_fraction
            left, top = (w - side) / 2, (h - side) / 2
            boxes.append((left, top, left + side, top + side))
        return _resize_boxes(images, np.array(boxes, dtype=float), self.size)


def _resize_boxes(images, boxes, size):
    channels = images[0].shape[2]
    out = np.empty((len(images), size, size, channels), dtype=np.uint8)
    for i, (image, box) in enumerate(zip(images, boxes)):
        resized = _to_pil(image).resize((size, size), Image.BILINEAR, box=tuple(float(v) for v in box))
        out[i] = _from_pil(resized, channels).reshape(size, size, channels)
    return out


# ------------------------------------------------------------------------------ RandAugment
def _enhance(kind):
    def apply(image, level, sign):
        return getattr(ImageEnhance, kind)(image).enhance(1.0 + sign * 0.9 * level)

    return apply


def _affine(image, matrix):
    fill = _FILL if image.mode == "L" else (_FILL,) * 3
    return image.transform(image.size, Image.AFFINE, matrix, Image.BILINEAR, fillcolor=fill)


def _rotate(image, level, sign):
    fill = _FILL if image.mode == "L" else (_FILL,) * 3
    return image.rotate(sign * 30.0 * level, Image.BILINEAR, fillcolor=fill)


# Operations on whole uint8 [n, H, W, C] batches (numpy): PIL builds their lookup tables in Python,
# which made them the slowest of the fourteen per image.
def _solarize(images, level, sign):
    threshold = int(round(256 - 256 * level))
    return np.where(images >= threshold, 255 - images, images).astype(np.uint8)


def _posterize(images, level, sign):
    keep = 8 - int(round(4 * level))
    return images & np.uint8((0xFF << (8 - keep)) & 0xFF)


def _autocontrast(images, level, sign):
    """PIL's ``ImageOps.autocontrast`` (no cutoff): stretch each channel of each image to 0..255."""
    lo = images.min(axis=(1, 2), keepdims=True).astype(np.float64)
    hi = images.max(axis=(1, 2), keepdims=True).astype(np.float64)
    scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1), 1.0)
    offset = np.where(hi > lo, -lo * scale, 0.0)
    return np.clip(np.floor(images * scale + offset), 0, 255).astype(np.uint8)


def _equalize(images, level, sign):
    """PIL's ``ImageOps.equalize`` per channel of each image, as one bincount and one gather."""
    n, h, w, c = images.shape
    channel_ids = np.arange(n * c).reshape(n, 1, 1, c) * 256
    hist = np.bincount((channel_ids + images).ravel(), minlength=n * c * 256).reshape(n * c, 256)
    total = hist.sum(axis=1)
    last = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)  # the largest value present
    step = (total - hist[np.arange(n * c), last]) // 255
    cum_before = np.cumsum(hist, axis=1) - hist
    lut = (step[:, None] // 2 + cum_before) // np.maximum(step, 1)[:, None]
    identity = ((hist > 0).sum(axis=1) <= 1) | (step == 0)
    lut = np.where(identity[:, None], np.arange(256)[None, :], np.minimum(lut, 255))
    flat = images.transpose(0, 3, 1, 2).reshape(n * c, h * w)
    out = np.take_along_axis(lut, flat.astype(np.int64), axis=1).astype(np.uint8)
    return out.reshape(n, c, h, w).transpose(0, 2, 3, 1)


# Per-image operations (PIL).
RAND_AUGMENT_PIL_OPS = {
    "Rotate": _rotate,
    "Color": _enhance("Color"),
    "Contrast": _enhance("Contrast"),
    "Brightness": _enhance("Brightness"),
    "Sharpness": _enhance("Sharpness"),
    "ShearX": lambda image, level, sign: _affine(image, (1, sign * 0.3 * level, 0, 0, 1, 0)),
    "ShearY": lambda image, level, sign: _affine(image, (1, 0, 0, sign * 0.3 * level, 1, 0)),
    "TranslateX": lambda image, level, sign: _affine(image, (1, 0, sign * 0.45 * level * image.size[0], 0, 1, 0)),
    "TranslateY": lambda image, level, sign: _affine(image, (1, 0, 0, 0, 1, sign * 0.45 * level * image.size[1])),
}
RAND_AUGMENT_BATCH_OPS = {
    "Identity": lambda images, level, sign: images,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Solarize": _solarize,
    "Posterize": _posterize,
}
RAND_AUGMENT_OPS = tuple(RAND_AUGMENT_BATCH_OPS) + tuple(RAND_AUGMENT_PIL_OPS)


class RandAugment:
    """``num_ops`` operations per image at magnitude ``magnitude`` (0..10); see the module docstring.

    Each of the ``num_ops`` rounds groups the batch by the operation drawn: numpy operations run
    once on their group, PIL operations once per image of theirs.
    """

    def __init__(self, num_ops=2, magnitude=9):
        if not 0 <= magnitude <= 10:
            raise ValueError(f"RandAugment magnitude {magnitude} outside 0..10")
        self.num_ops, self.level = int(num_ops), magnitude / 10.0

    def __call__(self, images, keys):
        images = _require_batch(images, "RandAugment")
        if self.num_ops == 0:
            return images
        u = keys.uniform(2 * self.num_ops)
        choice = (u[:, :self.num_ops] * len(RAND_AUGMENT_OPS)).astype(np.int64)
        sign = np.where(u[:, self.num_ops:] < 0.5, -1.0, 1.0)
        out = images.copy()
        channels = images.shape[3]
        for k in range(self.num_ops):
            for op_id in np.unique(choice[:, k]):
                name = RAND_AUGMENT_OPS[op_id]
                rows = np.flatnonzero(choice[:, k] == op_id)
                if name in RAND_AUGMENT_BATCH_OPS:
                    out[rows] = RAND_AUGMENT_BATCH_OPS[name](out[rows], self.level, sign[rows, k])
                    continue
                op = RAND_AUGMENT_PIL_OPS[name]
                for i in rows:
                    out[i] = _from_pil(op(_to_pil(out[i]), self.level, sign[i, k]), channels)
        return out


# ------------------------------------------------------------------------------ float stage
class Normalize:
    """uint8 NHWC -> float32 NCHW, ``(x / 255 - mean) / std`` per channel (mean/std in [0, 1] units)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if np.any(self.std <= 0):
            raise ValueError(f"normalisation std must be positive, got {list(self.std)}")

    def __call__(self, images, keys):
        images = _require_batch(images, "Normalize")
        if images.shape[3] != len(self.mean):
            raise ValueError(f"{images.shape[3]}-channel images but {len(self.mean)} normalisation means")
        scale = 1.0 / (255.0 * self.std)
        out = images.astype(np.float32) * scale - self.mean / self.std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


class RandomErasing:
    """Erase one random box per chosen image of a float NCHW batch (set it to 0, the mean colour)."""

    def __init__(self, p=0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), attempts=10):
        self.p, self.scale, self.ratio, self.attempts = float(p), tuple(scale), tuple(ratio), attempts

    def __call__(self, images, keys):
        b, _, h, w = images.shape
        n = self.attempts
        u = keys.uniform(2 * n + 3)
        area = h * w * (self.scale[0] + u[:, :n] * (self.scale[1] - self.scale[0]))
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = np.exp(log_lo + u[:, n:2 * n] * (log_hi - log_lo))
        box_h = np.round(np.sqrt(area * aspect)).astype(np.int64)
        box_w = np.round(np.sqrt(area / aspect)).astype(np.int64)
        fits = (box_h >= 1) & (box_w >= 1) & (box_h < h) & (box_w < w)
        first = fits.argmax(axis=1)
        rows = np.arange(b)
        box_h, box_w = box_h[rows, first], box_w[rows, first]
        erase = (u[:, 2 * n] < self.p) & fits.any(axis=1)
        top = np.floor(u[:, 2 * n + 1] * (h - box_h + 1)).astype(np.int64)
        left = np.floor(u[:, 2 * n + 2] * (w - box_w + 1)).astype(np.int64)
        ys, xs = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
        mask = ((ys >= top[:, None, None]) & (ys < (top + box_h)[:, None, None])
                & (xs >= left[:, None, None]) & (xs < (left + box_w)[:, None, None]) & erase[:, None, None])
        return np.where(mask[:, None], np.float32(0.0), images)


# ------------------------------------------------------------------------------ batch mixing
def smooth_one_hot(labels, num_classes, smoothing=0.0):
    """``(1 - smoothing) * one_hot + smoothing / num_classes`` as float32 ``[B, num_classes]``."""
    targets = np.full((len(labels), num_classes), smoothing / num_classes, dtype=np.float32)
    targets[np.arange(len(labels)), labels] += 1.0 - smoothing
    return targets


class BatchMixer:
    """Mixup / CutMix for a float NCHW batch; returns (images, soft targets); see the module docstring."""

    def __init__(self, num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0, switch_prob=0.5):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.label_smoothing, self.switch_prob = label_smoothing, switch_prob

    @property
    def active(self):
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, images, labels, seed, epoch, batch_index):
        rng = np.random.default_rng([int(seed), int(epoch), int(batch_index), 0x6D6978])
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if not self.active:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        partner = rng.permutation(len(labels))
        if use_cutmix:
            h, w = images.shape[2:]
            cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            images = images.copy()
            images[:, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        else:
            images = (lam * images + (1 - lam) * images[partner]).astype(np.float32)
        mixed = lam * targets + (1 - lam) * targets[partner]
        return images, mixed.astype(np.float32)
