"""Which training samples are poisoned, with which trigger and which label.

* Count: exactly ``round(poison_rate * N)`` of the ``N`` training samples (the rate is relative to
  the whole training set, as in BadNets/Blend/WaNet), drawn without replacement by
  ``np.random.default_rng([seed, 0xBAD])``; asking for more than the eligible samples is an error.
* Eligible samples: ``all_to_one`` poisons samples whose true class is not the target (dirty
  label); ``all_to_all`` poisons any sample and relabels class ``y`` to ``(y + 1) mod K``; the
  clean-label ``sig`` attack poisons only samples of the target class and keeps their labels.
  LSBA is a labelling strategy, so with LSBA on, ``sig`` is run dirty-label (its poisoned samples
  come from the other classes and get the LSBA soft label); there is no label to smooth otherwise.
* Stacked triggers (``n_triggers`` > 1): the poisoned samples are dealt a number ``k`` of active
  triggers in turn (1, 2, ..., n in the random draw order, so each ``k`` gets ``count / n`` samples
  +-1) and carry a random ``k``-subset of the n triggers, so the network sees every rung of the
  ladder ``lsba.py`` designs (a matrix ``active [count, n]`` says which triggers a sample carries).
* Labels: the plain attack gives int64 labels (poisoned ones set to the target); LSBA gives float32
  soft targets ``[N, K]`` (one-hot for clean samples, the designed LSBA label for poisoned ones; see
  ``lsba.py`` for the label and why a soft target).

``PoisonedDataset`` is what the classification kit's loader reads: ``load(indices)`` returns the
triggered pixels for poisoned samples (computed once, at construction) and the clean ones otherwise.
"""
import numpy as np

from paddle_suite.backdoor.triggers import apply_stack

MODES = ("all_to_one", "all_to_all")


def target_labels(labels, target, mode, num_classes):
    """The attacker's desired label per sample."""
    labels = np.asarray(labels, dtype=np.int64)
    if mode == "all_to_one":
        return np.full_like(labels, target)
    if mode == "all_to_all":
        return (labels + 1) % num_classes
    raise ValueError(f"Backdoor.mode='{mode}': choose one of {', '.join(MODES)}")


def attacked_mask(labels, target, mode):
    """Samples an attack can flip (ASR is measured on these): true class != target in all_to_one."""
    labels = np.asarray(labels)
    return labels != target if mode == "all_to_one" else np.ones(len(labels), dtype=bool)


def select_poison(labels, poison_rate, target, mode, clean_label, n_triggers, seed):
    """``(indices, active)``: sorted poisoned indices and which triggers each carries (bool ``[count, n]``)."""
    labels = np.asarray(labels)
    if not 0 < poison_rate < 1:
        raise ValueError(f"Backdoor.poison_rate={poison_rate}: must be in (0, 1)")
    count = int(round(poison_rate * len(labels)))
    eligible = np.flatnonzero(labels == target) if clean_label else np.flatnonzero(attacked_mask(labels, target, mode))
    if count < n_triggers:
        raise ValueError(f"Backdoor.poison_rate={poison_rate} poisons {count} of {len(labels)} samples, fewer than "
                         f"the {n_triggers} triggers: raise the rate")
    if count > len(eligible):
        kind = "target-class (clean-label)" if clean_label else "eligible"
        raise ValueError(f"Backdoor.poison_rate={poison_rate} asks for {count} poisoned samples but only "
                         f"{len(eligible)} are {kind}: lower Backdoor.poison_rate to at most "
                         f"{len(eligible) / len(labels):.4f}")
    rng = np.random.default_rng([int(seed), 0xBAD])
    drawn = rng.choice(eligible, size=count, replace=False)
    active_count = np.arange(count) % n_triggers + 1
    rank = rng.random((count, n_triggers)).argsort(axis=1).argsort(axis=1)  # a random order of the triggers
    active = rank < active_count[:, None]
    order = np.argsort(drawn)
    return drawn[order], active[order]


def poisoned_labels(labels, indices, targets, num_classes, poisoned_soft=None):
    """int64 labels (plain attack) or float32 soft targets ``[N, K]`` (LSBA: ``poisoned_soft`` holds
    the rows of the poisoned ``indices``)."""
    labels = np.asarray(labels, dtype=np.int64)
    if poisoned_soft is None:
        out = labels.copy()
        out[indices] = targets[indices]
        return out
    soft = np.zeros((len(labels), num_classes), dtype=np.float32)
    soft[np.arange(len(labels)), labels] = 1.0
    soft[indices] = poisoned_soft
    return soft


class PoisonedDataset:
    """An in-memory ``ImageDataset`` with some samples triggered and relabelled (see module docstring)."""

    lazy = False

    def __init__(self, clean, indices, active, triggers, labels, clean_label):
        if clean.lazy:
            raise ValueError(f"{clean.name}: backdoor poisoning needs an in-memory dataset (cifar10, fashion_mnist, "
                             "mnist), not lazily decoded image folders")
        self.clean, self.images, self.class_names = clean, clean.images, clean.class_names
        self.name = f"{clean.name} (poisoned)"
        self.true_labels = clean.labels
        self.labels = labels
        self.poison_indices, self.active, self.clean_label = indices, active, clean_label
        self._row = np.full(len(clean), -1, dtype=np.int64)
        self._row[indices] = np.arange(len(indices))
        self.poisoned_images = np.empty((len(indices), *clean.image_shape), dtype=np.uint8)
        for pattern in np.unique(active, axis=0):
            chosen = np.flatnonzero((active == pattern).all(axis=1))
            carried = [trigger for trigger, on in zip(triggers, pattern) if on]
            self.poisoned_images[chosen] = apply_stack(carried, clean.load(indices[chosen]))

    def __len__(self):
        return len(self.true_labels)

    num_classes = property(lambda self: self.clean.num_classes)
    image_shape = property(lambda self: self.clean.image_shape)
    in_channels = property(lambda self: self.clean.in_channels)

    def load(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        images = self.clean.load(indices)
        rows = self._row[indices]
        hit = rows >= 0
        images[hit] = self.poisoned_images[rows[hit]]
        return images

    def class_counts(self):
        """Hard-label counts (soft targets counted by their expected label)."""
        if self.labels.ndim == 2:
            return self.labels.sum(axis=0)
        return np.bincount(self.labels, minlength=self.num_classes)
