"""Classification losses, registered by name in ``LOSSES`` (``Loss.name`` of a config).

Both take ``(logits [B, K], target)`` where ``target`` is int64 labels ``[B]`` or float soft
targets ``[B, K]`` (rows summing to 1, e.g. from mixup/cutmix), and return the batch mean.

* ``cross_entropy``: ``-sum_k t_k log softmax(logits)_k`` with label smoothing ``eps``:
  ``t = (1 - eps) one_hot + eps / K`` (Szegedy et al. 2016, the uniform prior over all K
  classes, the true one included). Soft targets are smoothed the same way.
* ``soft_target_cross_entropy``: the same without smoothing, for targets that are already soft
  (the classification task smooths before mixing, so mixed targets are not smoothed twice).
"""
import paddle
import paddle.nn.functional as F

from paddle_suite.registry import LOSSES


def _targets(logits, target, smoothing):
    num_classes = logits.shape[-1]
    if target.ndim == 1 or (target.ndim == 2 and target.shape[-1] == 1 and num_classes != 1):
        target = F.one_hot(target.reshape([-1]).astype("int64"), num_classes)
    target = target.astype(logits.dtype)
    if smoothing:
        target = target * (1.0 - smoothing) + smoothing / num_classes
    return target


@LOSSES.register("cross_entropy")
class CrossEntropy(paddle.nn.Layer):
    def __init__(self, label_smoothing=0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits, target):
        target = _targets(logits, target, self.label_smoothing)
        return -(target * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()


@LOSSES.register("soft_target_cross_entropy")
class SoftTargetCrossEntropy(CrossEntropy):
    def __init__(self, label_smoothing=0.0):
        super().__init__(0.0)
