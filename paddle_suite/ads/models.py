"""CTR networks (DNN, DeepFM, Wide&Deep) shared by every training mode of the ads capability.

The network *body* is a ``paddle.nn.Layer`` mapping ``(emb [n, S, sparse_dim], dense [n, D]) ->
logit [n, 1]``. Every mode builds it into a static program: the Fleet parameter server and
local static training look keys up in a sparse table (``embed_keys``), the hierarchical pass
mode gathers ``emb`` from the per-pass HBM table by local row index
(``hierarchical_train.PassStep``). Only the embedding lookup differs between modes.

Choices where the papers leave details open:

* One shared embedding table for all slots (keys are already hashed per slot into one 64-bit
  space by the data readers), as in PaddleRec's Criteo models.
* DeepFM's first-order weight of a key is the last column of that key's row
  (``sparse_dim = emb_dim + 1``), so one row carries everything a key owns and the
  hierarchical store moves it as one unit.
* Dense features enter the DNN tower concatenated with the flattened embeddings and, in
  DeepFM and Wide&Deep, also through a linear first-order term.
* Wide&Deep (Cheng et al. 2016): logit = wide + deep, trained jointly. The wide part is a
  linear model over the sparse slots (a 1-d weight per key, stored like DeepFM's as the last
  column of the key's row) plus the dense features; the deep part is the DNN tower on the
  embeddings and dense features. The paper's hand-picked cross-product features are left out
  (they are a feature-engineering choice per data set; hashed crosses can be fed as extra
  slots), and both parts train with the run's optimisers (sparse rows: ``PS.sparse_optimizer``,
  dense: ``Optimizer``) rather than the paper's FTRL for the wide part.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_suite.registry import ARCHS

#: name of the sparse table parameter (one table shared by all slots)
SPARSE_TABLE = "ctr_sparse_table"
#: persistable running sum of per-example losses (reset per pass)
LOSS_SUM = "ctr_loss_sum"


def _mlp(in_dim, hidden_sizes):
    layers = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_dim, size), nn.ReLU()]
        in_dim = size
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)


class DNNBody(nn.Layer):
    """Flattened slot embeddings + dense features -> MLP -> logit."""

    def __init__(self, num_slots, num_dense, emb_dim=16, hidden_sizes=(400, 400, 400)):
        super().__init__()
        self.num_slots, self.num_dense, self.emb_dim = num_slots, num_dense, emb_dim
        self.sparse_dim = emb_dim
        self.mlp = _mlp(num_slots * emb_dim + num_dense, hidden_sizes)

    def forward(self, emb, dense):
        flat = paddle.reshape(emb, [-1, self.num_slots * self.emb_dim])
        return self.mlp(paddle.concat([flat, dense], axis=1))


class DeepFMBody(nn.Layer):
    """DeepFM: first-order + pairwise FM over slot vectors + a DNN tower on the same vectors."""

    def __init__(self, num_slots, num_dense, emb_dim=16, hidden_sizes=(400, 400, 400)):
        super().__init__()
        self.num_slots, self.num_dense, self.emb_dim = num_slots, num_dense, emb_dim
        self.sparse_dim = emb_dim + 1  # last column: the key's first-order weight
        self.dense_linear = nn.Linear(num_dense, 1)
        self.mlp = _mlp(num_slots * emb_dim + num_dense, hidden_sizes)

    def forward(self, emb, dense):
        vectors = emb[:, :, : self.emb_dim]
        first_order = paddle.sum(emb[:, :, self.emb_dim], axis=1, keepdim=True) + self.dense_linear(dense)
        summed = paddle.sum(vectors, axis=1)
        pairwise = 0.5 * paddle.sum(summed * summed - paddle.sum(vectors * vectors, axis=1), axis=1, keepdim=True)
        flat = paddle.reshape(vectors, [-1, self.num_slots * self.emb_dim])
        deep = self.mlp(paddle.concat([flat, dense], axis=1))
        return first_order + pairwise + deep


class WideDeepBody(nn.Layer):
    """Wide&Deep: a linear model over the slots' keys and the dense features + a DNN tower."""

    def __init__(self, num_slots, num_dense, emb_dim=16, hidden_sizes=(400, 400, 400)):
        super().__init__()
        self.num_slots, self.num_dense, self.emb_dim = num_slots, num_dense, emb_dim
        self.sparse_dim = emb_dim + 1  # last column: the key's wide (linear) weight
        self.dense_linear = nn.Linear(num_dense, 1)
        self.mlp = _mlp(num_slots * emb_dim + num_dense, hidden_sizes)

    def forward(self, emb, dense):
        wide = paddle.sum(emb[:, :, self.emb_dim], axis=1, keepdim=True) + self.dense_linear(dense)
        flat = paddle.reshape(emb[:, :, : self.emb_dim], [-1, self.num_slots * self.emb_dim])
        return wide + self.mlp(paddle.concat([flat, dense], axis=1))


@ARCHS.register("CtrDNN")
def ctr_dnn(num_slots, num_dense, emb_dim: int = 16, hidden_sizes: list = (400, 400, 400)):
    """Arch factory: ``Arch: {name: CtrDNN, emb_dim: 16, hidden_sizes: [400, 400, 400]}``."""
    return DNNBody(num_slots, num_dense, int(emb_dim), tuple(int(h) for h in hidden_sizes))


@ARCHS.register("DeepFM")
def deepfm(num_slots, num_dense, emb_dim: int = 16, hidden_sizes: list = (400, 400, 400)):
    """Arch factory: ``Arch: {name: DeepFM, emb_dim: 16, hidden_sizes: [400, 400, 400]}``."""
    return DeepFMBody(num_slots, num_dense, int(emb_dim), tuple(int(h) for h in hidden_sizes))


@ARCHS.register("WideDeep")
def wide_deep(num_slots, num_dense, emb_dim: int = 16, hidden_sizes: list = (400, 400, 400)):
    """Arch factory: ``Arch: {name: WideDeep, emb_dim: 16, hidden_sizes: [400, 400, 400]}``."""
    return WideDeepBody(num_slots, num_dense, int(emb_dim), tuple(int(h) for h in hidden_sizes))


def bce_loss(logit, label):
    """Mean sigmoid cross-entropy; ``label`` may be int64 or float, shape [n] or [n, 1]."""
    label = paddle.cast(paddle.reshape(label, [-1, 1]), "float32")
    return paddle.mean(F.binary_cross_entropy_with_logits(logit, label))


# ---------------------------------------------------------------------------------------------
# Static-graph programs
# ---------------------------------------------------------------------------------------------


def embed_keys(keys, sparse_dim, lookup, vocab_size=0, init_std=0.01, lr_scale=1.0):
    """Static-graph lookup of ``keys`` ([n, S, 1] int64) -> [n, S, sparse_dim].

    ``lookup``: ``"ps"`` -> ``sparse_embedding`` (Fleet async PS; MemorySparseTable grows with the
    keys, so ``vocab_size`` is only nominal); ``"local"`` -> a bounded ``embedding(is_sparse=True)``
    table of ``vocab_size`` rows (local and geo modes; the caller maps keys into range).
    """
    num_slots = keys.shape[1]
    keys = paddle.reshape(keys, [-1, 1])  # the PS lookup op only accepts 2-D ids
    # Uniform with the requested std: the PS startup program aborts on a Gaussian initialiser.
    init = paddle.nn.initializer.Uniform(-init_std * 3**0.5, init_std * 3**0.5)
    attr = paddle.ParamAttr(name=SPARSE_TABLE, initializer=init, learning_rate=float(lr_scale))
    if lookup == "ps":
        emb = paddle.static.nn.sparse_embedding(
            keys, size=[max(vocab_size, 1), sparse_dim], param_attr=attr, table_class="MemorySparseTable"
        )
    elif lookup == "local":
        if vocab_size <= 0:
            raise ValueError(f"local/geo embedding needs PS.local_vocab > 0, got {vocab_size}")
        emb = paddle.static.nn.embedding(keys, size=[vocab_size, sparse_dim], is_sparse=True, param_attr=attr)
    else:
        raise ValueError(f"unknown lookup '{lookup}' (expected 'ps' or 'local')")
    return paddle.reshape(emb, [-1, num_slots, sparse_dim])


def _drop_op_writing(var):
    """Remove the op of ``var``'s block that outputs ``var`` (nothing else may read ``var``)."""
    block = var.block
    for i, op in enumerate(block.ops):
        if var.name in op.output_arg_names:
            block._remove_op(i)
            block._remove_var(var.name)
            return
    raise ValueError(f"no op writes {var.name}")


def build_static_program(body, lookup, vocab_size=0, init_std=0.01, auc_thresholds=4096, lr_scale=1.0,
                         slot_inputs=False):
    """Build the CTR program in the current default main/startup programs.

    Inputs: ``slot_inputs=False`` -> ``label`` [n, 1] int64, ``dense`` [n, D], and the keys (fed from
    numpy batches): for ``lookup="ps"`` ``keys`` [n, S, 1] int64; for ``lookup="local"`` the batch's
    distinct keys ``keys_unique`` [u, 1] int64 and ``key_index`` [n * S] int64 (each key's position in
    ``keys_unique``): the table is read, and its sparse gradient and lazy optimiser update touch, u
    rows instead of n * S (about half of them on Zipf-distributed ads keys), as a parameter server's
    pull of distinct keys does; ``slot_inputs=True`` -> Fleet dataset slots in
    ``data.USE_VAR_SLOTS`` order: ``click``, ``dense_feature``, ``C1``..``C<S>`` ([n, 1] int64,
    lod_level 1, one key each), for ``InMemoryDataset`` + the data module's generator.

    Returns a dict with ``use_vars`` (inputs in feed order), ``logit``, ``prob``, ``loss``, ``auc``
    (accumulated over the stat vars), ``auc_states`` (its ``[stat_pos, stat_neg]``, reset per pass) and
    ``loss_sum`` (a persistable running sum of per-example losses, for runs whose batches
    Python never sees).
    """
    num_slots, num_dense = body.num_slots, body.num_dense
    if slot_inputs:
        label = paddle.static.data("click", shape=[-1, 1], dtype="int64")
        dense = paddle.static.data("dense_feature", shape=[-1, num_dense], dtype="float32")
        slots = [paddle.static.data(f"C{i + 1}", shape=[-1, 1], dtype="int64", lod_level=1) for i in range(num_slots)]
        # one lookup per slot variable: Fleet's dataset worker (DownpourLiteWorker) aborts in its
        # dense push when one lookup reads the concatenated slots (checked on paddle 2.6.2)
        keys = None
        emb = paddle.stack([paddle.reshape(embed_keys(paddle.reshape(slot, [-1, 1, 1]), body.sparse_dim, lookup,
                                                      vocab_size, init_std, lr_scale), [-1, body.sparse_dim])
                            for slot in slots], axis=1)
        use_vars = [label, dense, *slots]
    else:
        label = paddle.static.data("label", shape=[-1, 1], dtype="int64")
        dense = paddle.static.data("dense", shape=[-1, num_dense], dtype="float32")
        if lookup == "local":
            keys = paddle.static.data("keys_unique", shape=[-1, 1, 1], dtype="int64")
            key_index = paddle.static.data("key_index", shape=[-1], dtype="int64")
            use_vars = [label, dense, keys, key_index]
            rows = paddle.reshape(embed_keys(keys, body.sparse_dim, lookup, vocab_size, init_std, lr_scale),
                                  [-1, body.sparse_dim])
            emb = paddle.reshape(paddle.gather(rows, key_index), [-1, num_slots, body.sparse_dim])
        else:
            keys = paddle.static.data("keys", shape=[-1, num_slots, 1], dtype="int64")
            use_vars = [label, dense, keys]
            emb = embed_keys(keys, body.sparse_dim, lookup, vocab_size, init_std, lr_scale)
    logit = body(emb, dense)
    loss = bce_loss(logit, label)
    prob = F.sigmoid(logit)
    auc, batch_auc, auc_states = paddle.static.auc(
        paddle.concat([1.0 - prob, prob], axis=1), label, num_thresholds=auc_thresholds, slide_steps=0
    )
    _drop_op_writing(batch_auc)  # with slide_steps=0 it accumulates what the global AUC op does
    auc_states = auc_states[2:]  # the global op's [stat_pos, stat_neg]; the batch op's are unused now
    loss_sum = paddle.static.create_global_var([1], 0.0, "float32", persistable=True, name=LOSS_SUM)
    count = paddle.cast(paddle.shape(label)[0], "float32")
    paddle.assign(loss_sum + loss.detach() * count, loss_sum)
    return {
        "label": label, "dense": dense, "keys": keys, "use_vars": use_vars, "logit": logit, "prob": prob,
        "loss": loss, "auc": auc, "auc_states": auc_states, "loss_sum": loss_sum,
    }


def reset_pass_metrics(scope, auc_states):
    """Zero the AUC accumulators and the loss sum (called at the start of every pass)."""
    import numpy as np

    for name in [var.name for var in auc_states] + [LOSS_SUM]:
        holder = scope.find_var(name)
        if holder is None:
            continue
        tensor = holder.get_tensor()
        current = np.array(tensor)
        tensor.set(np.zeros(current.shape, dtype=current.dtype), paddle.CPUPlace())
