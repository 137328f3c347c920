import numpy as np
import pytest
from PIL import ImageOps

from paddle_suite.classification import transforms as T

RNG = np.random.default_rng(0)
BATCH = RNG.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
INDICES = np.arange(100, 112)


def full_pipeline():
    return T.Compose([T.RandomCropPad(4), T.HorizontalFlip(0.5), T.RandAugment(2, 9),
                      T.Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), T.RandomErasing(0.5)])


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    pipeline = full_pipeline()
    out = pipeline(BATCH, 7, 3, INDICES)
    np.testing.assert_array_equal(out, full_pipeline()(BATCH.copy(), 7, 3, INDICES))
    # the same sample in another batch (another position, other neighbours) is augmented the same way
    picked = [9, 2, 5]
    alone = pipeline(BATCH[picked], 7, 3, INDICES[picked])
    np.testing.assert_array_equal(alone, out[picked])
    # and differently in another epoch or with another seed
    assert not np.array_equal(pipeline(BATCH, 7, 4, INDICES), out)
    assert not np.array_equal(pipeline(BATCH, 8, 3, INDICES), out)


def test_sample_keys_are_uniform_and_independent_across_ops():
    keys = T.SampleKeys(1, 0, np.arange(20_000))
    u = keys.uniform(2)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    assert abs(np.corrcoef(u[:, 0], keys.for_op(1).uniform(1)[:, 0])[0, 1]) < 0.03


def test_random_crop_pad_matches_a_per_sample_reference():
    keys = T.SampleKeys(3, 0, INDICES)
    out = T.RandomCropPad(4)(BATCH, keys)
    padded = np.pad(BATCH, ((0, 0), (4, 4), (4, 4), (0, 0)))
    u = keys.uniform(2)
    for i in range(len(BATCH)):
        top, left = int(u[i, 0] * 9), int(u[i, 1] * 9)
        np.testing.assert_array_equal(out[i], padded[i, top:top + 16, left:left + 16])
    offsets = (u * 9).astype(int)
    assert len(np.unique(offsets[:, 0])) > 3  # the crops really move


def test_horizontal_flip_flips_about_p_of_the_images():
    many = np.repeat(BATCH[:1], 2000, axis=0)
    out = T.HorizontalFlip(0.3)(many, T.SampleKeys(0, 0, np.arange(2000)))
    flipped = np.all(out == many[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(flipped | np.all(out == many, axis=(1, 2, 3)))
    assert 0.25 < flipped.mean() < 0.35


@pytest.mark.parametrize("name, pil", [
    ("Equalize", lambda im, level: ImageOps.equalize(im)),
    ("AutoContrast", lambda im, level: ImageOps.autocontrast(im)),
    ("Solarize", lambda im, level: ImageOps.solarize(im, int(round(256 - 256 * level)))),
    ("Posterize", lambda im, level: ImageOps.posterize(im, 8 - int(round(4 * level)))),
])
def test_batch_randaugment_ops_equal_pil(name, pil):
    images = np.concatenate([BATCH, np.full((1, 16, 16, 3), 7, np.uint8),
                             RNG.integers(100, 120, (1, 16, 16, 3), dtype=np.uint8)])
    grey = RNG.integers(0, 256, (3, 9, 9, 1), dtype=np.uint8)
    for batch in (images, grey):
        for level in (0.0, 0.5, 0.9, 1.0):
            got = T.RAND_AUGMENT_BATCH_OPS[name](batch, level, None)
            want = np.stack([T._from_pil(pil(T._to_pil(image), level), batch.shape[3]) for image in batch])
            np.testing.assert_array_equal(got, want)


def test_randaugment_changes_images_and_keeps_shape():
    out = T.RandAugment(2, 9)(BATCH, T.SampleKeys(0, 0, INDICES))
    assert out.shape == BATCH.shape and out.dtype == np.uint8
    assert np.mean(np.any(out != BATCH, axis=(1, 2, 3))) > 0.5
    grey = T.RandAugment(3, 10)(BATCH[..., :1].copy(), T.SampleKeys(0, 0, INDICES))
    assert grey.shape == (12, 16, 16, 1)


def test_random_resized_crop_takes_mixed_sizes():
    images = [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 60), (33, 20), (8, 8), (100, 7)]]
    keys = T.SampleKeys(0, 0, np.arange(4))
    op = T.RandomResizedCrop(24, scale=(0.2, 1.0))
    boxes = op.boxes([im.shape[0] for im in images], [im.shape[1] for im in images], keys)
    for (left, top, right, bottom), image in zip(boxes, images):
        assert 0 <= left < right <= image.shape[1] and 0 <= top < bottom <= image.shape[0]
    assert op(images, keys).shape == (4, 24, 24, 3)
    assert T.ResizeCenterCrop(24)(images, keys).shape == (4, 24, 24, 3)


def test_normalize_and_random_erasing():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    out = T.Normalize(mean, std)(BATCH, None)
    reference = ((BATCH / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    assert out.dtype == np.float32 and out.shape == (12, 3, 16, 16)
    np.testing.assert_allclose(out, reference, atol=1e-5)

    big = np.repeat(out[:1] + 5.0, 1000, axis=0)  # no zeros before erasing
    erased = T.RandomErasing(0.5, scale=(0.02, 1 / 3))(big, T.SampleKeys(0, 0, np.arange(1000)))
    fraction = np.mean(erased == 0, axis=(1, 2, 3))
    hit = fraction > 0
    assert 0.4 < hit.mean() < 0.6
    assert fraction[hit].min() >= 0.01 and fraction[hit].max() <= 0.40
    np.testing.assert_array_equal(erased[~hit], big[~hit])


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_sum_to_one_and_are_seeded_by_batch(mixup, cutmix):
    images = T.Normalize([0.5] * 3, [0.25] * 3)(BATCH, None)
    labels = np.arange(12) % 10
    mixer = T.BatchMixer(10, mixup, cutmix, label_smoothing=0.1)
    out, targets = mixer(images, labels, 42, 1, 5)
    assert targets.shape == (12, 10) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert targets.min() >= 0.01 - 1e-7  # smoothing mass on every class
    again_images, again_targets = mixer(images, labels, 42, 1, 5)
    np.testing.assert_array_equal(out, again_images)
    np.testing.assert_array_equal(targets, again_targets)
    assert not np.array_equal(mixer(images, labels, 42, 1, 6)[1], targets)


def test_cutmix_lambda_is_the_area_kept():
    images = T.Normalize([0.5] * 3, [0.25] * 3)(BATCH, None)
    labels = np.arange(12) % 10
    for batch_index in range(5):
        out, targets = T.BatchMixer(10, 0.0, 1.0)(images, labels, 0, 0, batch_index)
        kept = np.mean(np.all(out == images, axis=1), axis=(1, 2))  # pixels still from the sample itself
        own = targets[np.arange(12), labels]
        partner_same = own > 0.999  # paired with itself: the whole image counts as its own
        np.testing.assert_allclose(kept[~partner_same], own[~partner_same], atol=1e-6)
