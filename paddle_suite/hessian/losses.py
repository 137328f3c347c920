"""Losses whose second derivatives paddle 2.6.2 computes correctly, with closed-form output Hessians.

paddle 2.6.2 has no double grad for ``softmax``, ``log_softmax``, ``cross_entropy``, ``exp`` or
``logsumexp`` (see PLATFORM.md, "Autograd"), so ``F.cross_entropy`` cannot be differentiated twice.
``SoftmaxCrossEntropy`` is the same loss written as two ``PyLayer`` s:

* ``_PerSampleCE(z, onehot)``: forward ``logsumexp(z) - z_y`` (stable, any ops: the forward is
  never differentiated twice); backward returns ``_SoftmaxMinusOnehot(z, onehot) * g``.
* ``_SoftmaxMinusOnehot(z, onehot)``: forward ``softmax(z) - onehot``; backward is the softmax
  Jacobian-vector product ``p * (d - <p, d>)``, built from multiply/subtract/sum only.

When the HVP differentiates the first backward again, paddle records ``_SoftmaxMinusOnehot`` and
the multiply by the incoming gradient ``g`` as graph nodes, so the second derivative through the
loss is the exact softmax Hessian ``diag(p) - p p^T``; the product with ``g`` is an ordinary
multiply, so a ``g`` that itself depends on the parameters is handled exactly too. Third
derivatives are not supported (nothing here needs them).

Every loss also exposes ``output_hvp(outputs, labels, w)``: the product of the Hessian of the
(reduced) loss with respect to the model outputs with ``w``, used by the Gauss-Newton product.
"""
import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer


class _SoftmaxMinusOnehot(PyLayer):
    @staticmethod
    def forward(ctx, logits, onehot):
        probs = F.softmax(logits, axis=-1)
        ctx.save_for_backward(probs)
        return probs - onehot

    @staticmethod
    def backward(ctx, upstream):
        (probs,) = ctx.saved_tensor()
        return probs * (upstream - (probs * upstream).sum(axis=-1, keepdim=True)), None


class _PerSampleCE(PyLayer):
    @staticmethod
    def forward(ctx, logits, onehot):
        shift = logits.max(axis=-1, keepdim=True)
        lse = paddle.log(paddle.exp(logits - shift).sum(axis=-1, keepdim=True)) + shift
        ctx.save_for_backward(logits, onehot)
        return (lse - (logits * onehot).sum(axis=-1, keepdim=True)).squeeze(-1)

    @staticmethod
    def backward(ctx, upstream):
        logits, onehot = ctx.saved_tensor()
        return _SoftmaxMinusOnehot.apply(logits, onehot) * upstream.unsqueeze(-1), None


def _onehot(labels, num_classes, dtype):
    labels = paddle.to_tensor(labels) if not isinstance(labels, paddle.Tensor) else labels
    if labels.ndim == 2 and labels.shape[-1] == 1:  # PaddleClas style [N, 1] labels
        labels = labels.squeeze(-1)
    if labels.ndim != 1:
        raise ValueError(f"SoftmaxCrossEntropy: labels must have shape [N] or [N, 1], got {labels.shape}")
    return F.one_hot(labels.astype("int64"), num_classes).astype(dtype)


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy over the batch, twice differentiable on paddle 2.6.2.

    ``loss(logits [N, C], labels [N] or [N, 1] int) -> scalar``; equals ``F.cross_entropy``.
    """

    def __call__(self, logits, labels):
        onehot = _onehot(labels, logits.shape[-1], logits.dtype)
        return _PerSampleCE.apply(logits, onehot).mean()

    def output_hvp(self, logits, labels, w):
        """(d^2 loss / d logits^2) w = (p * w - p <p, w>) / N, row by row (closed form)."""
        probs = F.softmax(logits.detach(), axis=-1)
        return (probs * w - probs * (probs * w).sum(axis=-1, keepdim=True)) / logits.shape[0]


class MeanSquaredError:
    """``mean((outputs - targets)^2)`` over all elements (``F.mse_loss``); output Hessian 2 I / numel."""

    def __call__(self, outputs, targets):
        diff = outputs - targets.astype(outputs.dtype)
        return (diff * diff).mean()  # multiply, not pow: its double grad is known good

    def output_hvp(self, outputs, targets, w):
        return w * (2.0 / outputs.size)
