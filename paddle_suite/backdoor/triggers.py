"""Backdoor triggers as deterministic, shape-preserving functions of uint8 NHWC image batches.

Every trigger is applied in pixel space before augmentation and normalisation (poisoning is a
property of the data, not of the model's input pipeline), is a pure function of the images and its
settings (random patterns come from a fixed seed), and maps uint8 ``[B, H, W, C]`` to uint8 of the
same shape, vectorised over the batch.

* ``badnets`` (Gu et al. 2017): a ``patch_size`` square at a corner, a fixed black/white
  checkerboard (the corner is ``index`` mod 4: bottom-right, bottom-left, top-right, top-left, so
  stacked triggers do not overlap), ``patch_margin`` pixels from the border.
* ``blend`` (Chen et al. 2017): ``(1 - alpha) x + alpha P`` with ``P`` a uniform random image drawn
  once from ``seed + index``; the paper's random-pattern variant.
* ``sig`` (Barni et al. 2019): ``x + delta sin(2 pi j f / W)`` along columns ``j``, clipped to
  [0, 255]; stacked copies use frequencies ``f, 2f, ...``.
* ``wanet`` (Nguyen & Tran 2021): a fixed smooth warp. A ``k x k`` field uniform in [-1, 1] (seeded),
  divided by its mean absolute value, upsampled bicubically to ``H x W``, scaled by ``strength / H``
  and added to the identity sampling grid in [-1, 1] coordinates (clipped to the image); pixels are
  resampled bilinearly. WaNet's "noise mode" (random warps kept at their true label) is not
  implemented: it trains the model to ignore other warps, a training-time hardening of the attack
  that is independent of the labelling strategy studied here.
"""
import numpy as np
from PIL import Image

ATTACKS = ("badnets", "blend", "sig", "wanet")

DEFAULTS = {
    "badnets": {"patch_size": 3, "patch_margin": 1},
    "blend": {"alpha": 0.2, "seed": 0},
    "sig": {"delta": 20.0, "frequency": 6.0},
    "wanet": {"grid_size": 4, "strength": 0.5, "seed": 0},
}


def _require_uint8_batch(images):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"triggers take uint8 [B, H, W, C] batches, got {images.dtype} {images.shape}")
    return images


class BadNets:
    def __init__(self, patch_size=3, patch_margin=1, index=0):
        self.patch_size, self.margin, self.corner = int(patch_size), int(patch_margin), index % 4

    def __call__(self, images):
        images = _require_uint8_batch(images).copy()
        h, w = images.shape[1:3]
        s, m = self.patch_size, self.margin
        if s + m > min(h, w):
            raise ValueError(f"badnets patch {s}px + margin {m}px does not fit a {h}x{w} image")
        top = h - m - s if self.corner in (0, 1) else m
        left = w - m - s if self.corner in (0, 2) else m
        checker = (np.indices((s, s)).sum(axis=0) % 2 == 0).astype(np.uint8) * 255
        images[:, top:top + s, left:left + s, :] = checker[None, :, :, None]
        return images


class Blend:
    def __init__(self, alpha=0.2, seed=0, index=0):
        if not 0 < alpha < 1:
            raise ValueError(f"blend alpha={alpha}: must be in (0, 1)")
        self.alpha, self.seed = float(alpha), int(seed) + index

    def pattern(self, shape):
        return np.random.default_rng(self.seed).integers(0, 256, size=shape, dtype=np.int64).astype(np.float32)

    def __call__(self, images):
        images = _require_uint8_batch(images)
        mixed = (1 - self.alpha) * images.astype(np.float32) + self.alpha * self.pattern(images.shape[1:])
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


class Sig:
    def __init__(self, delta=20.0, frequency=6.0, index=0):
        self.delta, self.frequency = float(delta), float(frequency) * (index + 1)

    def __call__(self, images):
        images = _require_uint8_batch(images)
        w = images.shape[2]
        signal = self.delta * np.sin(2 * np.pi * np.arange(w) * self.frequency / w).astype(np.float32)
        return np.clip(np.rint(images.astype(np.float32) + signal[None, None, :, None]), 0, 255).astype(np.uint8)


class WaNet:
    def __init__(self, grid_size=4, strength=0.5, seed=0, index=0):
        self.grid_size, self.strength, self.seed = int(grid_size), float(strength), int(seed) + index
        self._maps = {}

    def sampling_points(self, h, w):
        """Source coordinates ``(ys, xs)`` in pixels of every output pixel (cached per size)."""
        if (h, w) not in self._maps:
            field = np.random.default_rng(self.seed).uniform(-1, 1, size=(2, self.grid_size, self.grid_size))
            field = (field / np.abs(field).mean()).astype(np.float32)
            up = np.stack([np.asarray(Image.fromarray(f, mode="F").resize((w, h), Image.BICUBIC)) for f in field])
            base_y, base_x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
            grid_y = np.clip(base_y + self.strength * up[0] / h, -1, 1)
            grid_x = np.clip(base_x + self.strength * up[1] / h, -1, 1)
            self._maps[(h, w)] = ((grid_y + 1) / 2 * (h - 1), (grid_x + 1) / 2 * (w - 1))
        return self._maps[(h, w)]

    def __call__(self, images):
        images = _require_uint8_batch(images)
        h, w = images.shape[1:3]
        ys, xs = self.sampling_points(h, w)
        y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        wy, wx = (ys - y0)[None, :, :, None], (xs - x0)[None, :, :, None]
        src = images.astype(np.float32)
        top = src[:, y0, x0] * (1 - wx) + src[:, y0, x1] * wx
        bottom = src[:, y1, x0] * (1 - wx) + src[:, y1, x1] * wx
        return np.clip(np.rint(top * (1 - wy) + bottom * wy), 0, 255).astype(np.uint8)


_CLASSES = {"badnets": BadNets, "blend": Blend, "sig": Sig, "wanet": WaNet}


def make_trigger(attack, params=None, index=0):
    """The ``index``-th trigger of family ``attack`` with ``params`` over its defaults."""
    if attack not in _CLASSES:
        raise ValueError(f"unknown attack '{attack}'; choose one of {', '.join(ATTACKS)}")
    settings = dict(DEFAULTS[attack])
    unknown = set(params or {}) - set(settings)
    if unknown:
        raise ValueError(f"Backdoor.trigger: unknown key(s) {sorted(unknown)} for {attack}; "
                         f"valid: {sorted(settings)}")
    settings.update(params or {})
    return _CLASSES[attack](index=index, **settings)


def apply_stack(triggers, images):
    """Apply several triggers one after another (the test-time activation of k stacked backdoors)."""
    for trigger in triggers:
        images = trigger(images)
    return images
