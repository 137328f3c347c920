"""Logician (Sun et al., arXiv:1904.12535): sentence -> SAOKE facts, as a ``paddle.nn.Layer``.

Architecture, with the readings we chose where the paper leaves details open:

- **Encoder**: embeddings + bidirectional GRU (``rnn: lstm`` for an LSTM), states ``H`` (B, L, 2h).
  The decoder starts from ``tanh(W mean(H))`` over the real (unpadded) positions.
- **Decoder**: a GRU cell fed ``[embedding of the previous output; previous context]`` (input
  feeding). The previous output's embedding is the keyword embedding, or for a copied word the
  source-word embedding (one table shared with the encoder).
- **Attention with coverage** (Tu et al. 2016; See et al. 2017): the additive score
  ``v . tanh(W_h h_i + W_s s_t + w_c c_t,i)`` sees the coverage ``c_t = sum of earlier
  attentions``; the coverage loss is ``sum_i min(a_t,i, c_t,i)`` per step, zero while attention
  keeps to fresh words and growing when it returns to covered ones.
- **Gated dependency attention**: the attention moved along the sentence graph,
  ``a_dep_t = a_{t-1} G`` (``G`` row-normalised adjacency with self loops, so attention on a word
  flows to its dependency neighbours), mixed with the content attention by a learnt gate
  ``g_t = sigmoid(w . [s_t; ctx_{t-1}])``: ``a_t = g a_content + (1 - g) a_dep``. ``G`` comes from
  dependency arcs (``heads``, one head index per token, -1 for the root) when ``graph: dependency``
  or, under ``graph: auto``, when an example has arcs; otherwise from the **adjacency of the
  sentence** (each token linked to its left and right neighbour), our documented fallback: no
  parser ships offline. ``graph: none`` turns the dependency path and its gate off.
- **Restricted copy**: the output distribution is over the small keyword vocabulary (SAOKE
  symbols, fact punctuation) plus the source positions:
  ``P = [p_kw * softmax(W_o [s_t; ctx_t]) ; (1 - p_kw) * a_t]`` with
  ``p_kw = sigmoid(w . [s_t; ctx_t; input_t])``. Both parts are distributions, so ``P`` sums to one.
  The training loss is ``-log`` of the probability of every action that spells the gold token
  (its keyword, or every source position holding that word) plus ``coverage_weight`` times the
  coverage loss, averaged over real target steps.
- **Beam search** keeps only continuations the fact grammar allows
  (:class:`paddle_suite.oie.tokens.FactGrammar`), so every finished hypothesis is a sequence of
  well-formed facts; a word's copy probability is summed over its positions (one action per
  distinct word); it stops when ``beam_size`` hypotheses have finished, ranked by
  log-probability divided by ``length ** length_penalty``.

The decoder loops over target steps in Python, batched over sentences: coverage and the
dependency path make step t depend on step t-1's attention, so the steps cannot be fused.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_suite.oie.tokens import (BOS, KEYWORD_ID, NUM_KEYWORDS, PAD, FactGrammar, GrammarState,
                                     decode_actions, encode_target, tokenize)
from paddle_suite.registry import ARCHS

GRAPHS = ("auto", "dependency", "adjacency", "none")
NEG_INF = -1e9


def sentence_graph(length, heads=None):
    """Row-normalised (length x length) graph with self loops: dependency arcs or adjacent tokens."""
    graph = np.eye(length, dtype=np.float32)
    if heads is None:
        index = np.arange(length - 1)
        graph[index, index + 1] = 1.0
        graph[index + 1, index] = 1.0
    else:
        if len(heads) != length:
            raise ValueError(f"{len(heads)} dependency heads for {length} tokens")
        for child, head in enumerate(heads):
            if head >= length or head < -1:
                raise ValueError(f"head {head} of token {child} is outside the sentence (0..{length - 1}, -1 = root)")
            if head >= 0:
                graph[child, head] = graph[head, child] = 1.0
    return graph / graph.sum(axis=1, keepdims=True)


def coverage_loss(attention, coverage):
    """Per-example ``sum_i min(a_i, c_i)`` (B,) for one step."""
    return paddle.minimum(attention, coverage).sum(axis=-1)


@ARCHS.register("Logician")
class Logician(nn.Layer):
    """Arch keys: ``vocab_size`` (from the data), ``embedding_dim``, ``hidden_size``, ``rnn`` (gru|lstm),
    ``graph`` (auto|dependency|adjacency|none), ``coverage``, ``dropout``."""

    def __init__(self, vocab_size, embedding_dim=128, hidden_size=256, rnn="gru", graph="auto",
                 coverage=True, dropout=0.1):
        super().__init__()
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {rnn!r}")
        self.graph, self.use_coverage = graph, coverage
        self.word_embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.keyword_embedding = nn.Embedding(NUM_KEYWORDS, embedding_dim)
        encoder_cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.encoder = encoder_cls(embedding_dim, hidden_size, direction="bidirect")
        memory = 2 * hidden_size
        self.bridge = nn.Linear(memory, hidden_size)
        self.decoder = nn.GRUCell(embedding_dim + memory, hidden_size)
        self.attn_memory = nn.Linear(memory, hidden_size, bias_attr=False)
        self.attn_state = nn.Linear(hidden_size, hidden_size)
        self.attn_coverage = nn.Linear(1, hidden_size, bias_attr=False)
        self.attn_v = nn.Linear(hidden_size, 1, bias_attr=False)
        self.dep_gate = nn.Linear(hidden_size + memory, 1)
        self.keyword_out = nn.Linear(hidden_size + memory, NUM_KEYWORDS)
        self.copy_gate = nn.Linear(hidden_size + memory + embedding_dim, 1)
        self.dropout = nn.Dropout(dropout)
        # Never emitted: padding and the start symbol.
        mask = np.zeros([NUM_KEYWORDS], dtype=np.float32)
        mask[[KEYWORD_ID[PAD], KEYWORD_ID[BOS]]] = NEG_INF
        self.register_buffer("keyword_mask", paddle.to_tensor(mask), persistable=False)

    # ------------------------------------------------------------------ pieces
    def encode(self, src_ids, src_mask):
        lengths = src_mask.sum(axis=1).astype("int64")
        memory, _ = self.encoder(self.dropout(self.word_embedding(src_ids)), sequence_length=lengths)
        memory = memory * src_mask.unsqueeze(-1)
        mean = memory.sum(axis=1) / src_mask.sum(axis=1, keepdim=True)
        return memory, self.attn_memory(memory), paddle.tanh(self.bridge(mean))

    def embed_inputs(self, input_ids):
        table = paddle.concat([self.keyword_embedding.weight, self.word_embedding.weight], axis=0)
        return F.embedding(input_ids, table)

    def init_state(self, memory, src_mask):
        batch, length = src_mask.shape
        uniform = src_mask / src_mask.sum(axis=1, keepdim=True)
        return {
            "context": paddle.zeros([batch, memory.shape[-1]]),
            "attention": uniform,
            "coverage": paddle.zeros([batch, length]),
        }

    def step(self, input_emb, hidden, state, memory, memory_proj, src_mask, graph):
        """One decoder step -> (output distribution (B, K+L), new hidden, new state, coverage loss (B,))."""
        hidden, _ = self.decoder(paddle.concat([input_emb, state["context"]], axis=-1), hidden)
        coverage = state["coverage"]
        score = self.attn_memory_score(memory_proj, hidden, coverage)
        score = score + (1.0 - src_mask) * NEG_INF
        attention = F.softmax(score, axis=-1)
        if graph is not None:
            moved = paddle.bmm(state["attention"].unsqueeze(1), graph).squeeze(1)
            gate = F.sigmoid(self.dep_gate(paddle.concat([hidden, state["context"]], axis=-1)))
            attention = gate * attention + (1.0 - gate) * moved
        context = paddle.bmm(attention.unsqueeze(1), memory).squeeze(1)
        features = paddle.concat([hidden, context], axis=-1)
        keyword_probs = F.softmax(self.keyword_out(self.dropout(features)) + self.keyword_mask, axis=-1)
        p_keyword = F.sigmoid(self.copy_gate(paddle.concat([features, input_emb], axis=-1)))
        distribution = paddle.concat([p_keyword * keyword_probs, (1.0 - p_keyword) * attention], axis=-1)
        cov_loss = coverage_loss(attention, coverage)
        new_state = {"context": context, "attention": attention,
                     "coverage": coverage + attention if self.use_coverage else coverage}
        return distribution, hidden, new_state, cov_loss

    def attn_memory_score(self, memory_proj, hidden, coverage):
        energy = memory_proj + self.attn_state(hidden).unsqueeze(1)
        if self.use_coverage:
            energy = energy + self.attn_coverage(coverage.unsqueeze(-1))
        return self.attn_v(paddle.tanh(energy)).squeeze(-1)

    # ------------------------------------------------------------------ training
    def forward(self, batch, coverage_weight=1.0):
        """Teacher-forced loss; returns (loss, {"nll": ..., "coverage": ...})."""
        if self.graph != "none" and batch["graph_mode"] != self.graph:
            raise ValueError(f"batch built with graph_mode={batch['graph_mode']!r} for a model with "
                             f"graph={self.graph!r}: pass make_batch(..., graph_mode=model.graph)")
        src_mask = batch["src_mask"]
        memory, memory_proj, hidden = self.encode(batch["src_ids"], src_mask)
        graph = batch["graph"] if self.graph != "none" else None
        state = self.init_state(memory, src_mask)
        inputs = self.embed_inputs(batch["tgt_in"])
        steps = batch["tgt_in"].shape[1]
        nll, cov = [], []
        for t in range(steps):
            distribution, hidden, state, cov_loss = self.step(inputs[:, t], hidden, state, memory, memory_proj,
                                                              src_mask, graph)
            gold = (distribution * batch["tgt_gold"][:, t]).sum(axis=-1)
            nll.append(-paddle.log(paddle.clip(gold, min=1e-12)))
            cov.append(cov_loss)
        mask = batch["tgt_mask"]
        denominator = mask.sum()
        nll = (paddle.stack(nll, axis=1) * mask).sum() / denominator
        cov = (paddle.stack(cov, axis=1) * mask).sum() / denominator
        loss = nll + coverage_weight * cov if self.use_coverage else nll
        return loss, {"nll": nll, "coverage": cov}

    # ------------------------------------------------------------------ decoding
    @paddle.no_grad()
    def beam_search(self, src_ids, graph, tokens=None, beam_size=4, max_steps=60, length_penalty=1.0):
        """Best grammatical action sequence for one sentence (``src_ids``: its word ids; ``tokens``:
        its tokens, so repeated words are merged; without them equal ids are merged)."""
        length = len(src_ids)
        keys = tokens if tokens is not None else src_ids
        if len(keys) != length:
            raise ValueError(f"{len(keys)} tokens for {length} word ids")
        first_of = {}
        first_position = np.asarray([first_of.setdefault(key, i) for i, key in enumerate(keys)])
        is_first = first_position == np.arange(length)
        ids = paddle.to_tensor(np.asarray([src_ids], dtype="int64"))
        src_mask = paddle.ones([1, length])
        memory, memory_proj, hidden = self.encode(ids, src_mask)
        graph_t = paddle.to_tensor(graph[None]) if self.graph != "none" else None
        state = self.init_state(memory, src_mask)
        grammar = FactGrammar()
        beams = [([], 0.0, GrammarState())]  # (actions, log-prob, grammar state)
        last_input = [KEYWORD_ID[BOS]]
        finished = []
        src_ids_np = np.asarray(src_ids)
        for _ in range(max_steps):
            n = len(beams)
            expand = paddle.to_tensor(np.zeros(n, dtype="int64"))
            distribution, hidden, state, _ = self.step(
                self.embed_inputs(paddle.to_tensor(np.asarray(last_input, dtype="int64"))),
                hidden, state, paddle.gather(memory, expand), paddle.gather(memory_proj, expand),
                paddle.gather(src_mask, expand), None if graph_t is None else paddle.gather(graph_t, expand))
            probs = distribution.numpy()
            # A word's probability is the sum over every position holding it (as in the loss);
            # it is credited to its first position and the other positions are closed.
            merged = np.zeros_like(probs[:, NUM_KEYWORDS:])
            np.add.at(merged.T, first_position, probs[:, NUM_KEYWORDS:].T)
            probs[:, NUM_KEYWORDS:] = merged
            log_probs = np.log(np.maximum(probs, 1e-30))
            allowed = np.full_like(log_probs, -np.inf)
            for b, (_, _, gstate) in enumerate(beams):
                keywords, copy_ok = grammar.allowed(gstate)
                allowed[b, keywords] = 0.0
                if copy_ok:
                    allowed[b, NUM_KEYWORDS:][is_first] = 0.0
            scores = (log_probs + allowed) + np.asarray([score for _, score, _ in beams])[:, None]
            order = np.argsort(-scores, axis=None)[: 2 * beam_size]
            new_beams, rows, inputs = [], [], []
            for flat in order:
                b, j = divmod(int(flat), scores.shape[1])
                if not np.isfinite(scores[b, j]):
                    break
                action = ("kw", j) if j < NUM_KEYWORDS else ("copy", j - NUM_KEYWORDS)
                actions = beams[b][0] + [action]
                gstate = grammar.advance(beams[b][2], action)
                if gstate.phase == "done":
                    finished.append((actions, float(scores[b, j]) / len(actions) ** length_penalty))
                    continue
                new_beams.append((actions, float(scores[b, j]), gstate))
                rows.append(b)
                inputs.append(j if j < NUM_KEYWORDS else NUM_KEYWORDS + int(src_ids_np[j - NUM_KEYWORDS]))
                if len(new_beams) == beam_size:
                    break
            if not new_beams or len(finished) >= beam_size:
                break
            index = paddle.to_tensor(np.asarray(rows, dtype="int64"))
            hidden = paddle.gather(hidden, index)
            state = {k: paddle.gather(v, index) for k, v in state.items()}
            beams, last_input = new_beams, inputs
        if finished:
            return max(finished, key=lambda item: item[1])[0]
        return beams[0][0]  # length limit: the best prefix; decode_actions drops an open fact

    def extract(self, sentence, vocab, language, heads=None, **beam_options):
        """SAOKE facts for one sentence."""
        tokens = tokenize(sentence, language)
        if not tokens:
            return []
        was_training = self.training
        self.eval()
        try:
            actions = self.beam_search(vocab.ids(tokens), self.graph_for(len(tokens), heads), tokens,
                                       **beam_options)
        finally:
            if was_training:
                self.train()
        return decode_actions(actions, tokens, language)

    def graph_for(self, length, heads):
        if self.graph == "dependency" and heads is None:
            raise ValueError("graph: dependency needs dependency heads for every sentence "
                             "(use graph: auto to fall back to the sentence adjacency)")
        if self.graph in ("adjacency", "none") or heads is None:
            return sentence_graph(length)
        return sentence_graph(length, heads)


def make_batch(examples, vocab, language, graph_mode="auto", max_source=None):
    """Padded tensors for teacher forcing from :class:`paddle_suite.oie.readers.Example` objects.

    ``tgt_gold[b, t]`` marks every action spelling the gold token at step t: its keyword, or
    every source position holding the copied word. ``graph_mode`` must be the model's ``graph``.
    Returns (batch dict, unreachable token count).
    """
    if graph_mode not in GRAPHS:
        raise ValueError(f"graph_mode must be one of {GRAPHS}, got {graph_mode!r}")
    sources, targets, graphs, unreachable = [], [], [], 0
    for example in examples:
        tokens = tokenize(example.sentence, language)[:max_source]
        if not tokens:
            raise ValueError(f"{example.source or 'example'}: empty sentence")
        encoded = encode_target(example.facts, tokens, language)
        unreachable += encoded.unreachable
        heads = getattr(example, "heads", None)
        if graph_mode == "dependency" and heads is None:
            raise ValueError(f"{example.source or 'example'}: graph: dependency needs dependency heads")
        use_heads = heads if graph_mode in ("auto", "dependency") else None
        sources.append(tokens)
        targets.append(encoded.actions)
        graphs.append(sentence_graph(len(tokens), None if use_heads is None else use_heads[:len(tokens)]))
    batch, max_len, max_tgt = len(examples), max(map(len, sources)), max(map(len, targets))
    src_ids = np.zeros([batch, max_len], dtype="int64")
    src_mask = np.zeros([batch, max_len], dtype="float32")
    graph = np.zeros([batch, max_len, max_len], dtype="float32")
    tgt_in = np.full([batch, max_tgt], KEYWORD_ID[PAD], dtype="int64")
    tgt_gold = np.zeros([batch, max_tgt, NUM_KEYWORDS + max_len], dtype="float32")
    tgt_mask = np.zeros([batch, max_tgt], dtype="float32")
    for b, (tokens, actions, g) in enumerate(zip(sources, targets, graphs)):
        word_ids = np.asarray(vocab.ids(tokens))
        length = len(tokens)
        src_ids[b, :length] = word_ids
        src_mask[b, :length] = 1.0
        graph[b, :length, :length] = g
        token_array = np.asarray(tokens, dtype=object)
        previous = KEYWORD_ID[BOS]
        for t, (kind, value) in enumerate(actions):
            tgt_in[b, t] = previous
            tgt_mask[b, t] = 1.0
            if kind == "kw":
                tgt_gold[b, t, value] = 1.0
                previous = value
            else:
                tgt_gold[b, t, NUM_KEYWORDS:NUM_KEYWORDS + length] = token_array == tokens[value]
                previous = NUM_KEYWORDS + int(word_ids[value])
    tensors = {"src_ids": src_ids, "src_mask": src_mask, "graph": graph, "tgt_in": tgt_in,
               "tgt_gold": tgt_gold, "tgt_mask": tgt_mask}
    tensors = {k: paddle.to_tensor(v) for k, v in tensors.items()}
    tensors["graph_mode"] = graph_mode
    return tensors, unreachable

