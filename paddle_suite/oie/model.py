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
  ``a_dep_t = a_{t-1} G``, mixed with the content attention by a learnt gate
  ``g_t = sigmoid(w . [s_t; ctx_{t-1}])``: ``a_t = g a_content + (1 - g) a_dep``. The paper gives no
  formula for ``G``; two readings (``path``):

  - ``neighbours`` (the default): ``G`` is the row-normalised adjacency with self loops, so
    attention on a word flows in equal parts to itself and its graph neighbours. It cannot say "the next word": it
    keeps a third or more on the word just copied and sends as much back as forward.
  - ``learned`` (``configs/logician_*_learned_path.yaml``): ``G[i, j] = softmax_j(w[d(i, j)])``
    over the sentence, where ``d(i, j)`` is the graph distance from ``i`` to ``j`` (arcs between i and j on the shortest
    path), signed by word order (negative when ``j`` comes before ``i``), clipped to
    ``+-PATH_RADIUS``, with ``2 PATH_RADIUS + 1`` learnt weights ``w``, initialised to the
    ``neighbours`` reading (0 within one arc, ``-PATH_INIT_FAR`` beyond). Attention can then learn
    to step to the following word of an argument, or to a word one arc away, and off the word it
    just copied. On the adjacency graph ``d(i, j) = j - i``. The configs train the weights
    (``path_weights``) at 20 times the learning rate (``Optimizer.param_groups``): an Adam step
    moves a parameter by about the learning rate, so at 1e-3 these few shared scalars could move
    only about 1 from their start in a 1,000-step run. Measured against ``neighbours`` and no gate:
    bench/oie_results.md; what the weights learn: bench/oie_results_notes.md.

  ``G`` comes from
  dependency arcs (``heads``, one head index per token, -1 for the root) when ``graph: dependency``
  or, under ``graph: auto``, when an example has arcs; otherwise from the **adjacency of the
  sentence** (each token linked to its left and right neighbour), our documented fallback where
  there is no parser: no dependency parser's model installs offline. For English,
  ``DataLoader.parser: link_grammar`` supplies arcs from CMU's link grammar parser
  (:mod:`paddle_suite.oie.parsing`); Chinese has none. ``graph: none`` turns the dependency path
  and its gate off.
- **Restricted copy**: the output distribution is over the small keyword vocabulary (SAOKE
  symbols, fact punctuation) plus the source positions:
  ``P = [p_kw * softmax(W_o [s_t; ctx_t]) ; (1 - p_kw) * a_t]`` with
  ``p_kw = sigmoid(w . [s_t; ctx_t; input_t])``. Both parts are distributions, so ``P`` sums to one.
  The training loss is ``-log`` of the probability of every action that spells the gold token
  (its keyword, or every source position holding that word) plus ``coverage_weight`` times the
  coverage loss, averaged over real target steps.
- **No copy** (``copy: false``, the ablation and the plain seq2seq): words are generated from the
  source vocabulary instead, ``P = softmax(W_g [s_t; ctx_t])`` over keywords + vocabulary words,
  with the same target actions (a word the sentence lacks is ``<unk>`` in both modes, so both
  learn the same sequences); a word outside the training vocabulary can then only be ``<unk>``.
  The plain attention seq2seq is ``copy: false, coverage: false, graph: none``.
- **Beam search** keeps only continuations the fact grammar allows
  (:class:`paddle_suite.oie.tokens.FactGrammar`), so every finished hypothesis is a sequence of
  well-formed facts; a word's copy probability is summed over its positions (one action per
  distinct word); hypotheses are ranked by log-probability divided by
  ``length ** length_penalty``, and a sentence's search stops once ``beam_size`` have finished and
  no live one ranks above the ``beam_size``-th of them. Sentences are decoded in batches
  (:meth:`Logician.beam_search_batch`): every live hypothesis of every sentence is one row of one
  decoder step, so the per-step cost of paddle's ops is shared by the whole batch.

The decoder loops over target steps in Python, batched over sentences: coverage and the
dependency path make step t depend on step t-1's attention, so the steps cannot be fused.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from paddle_suite.oie.tokens import (BOS, FACT_ORDERS, KEYWORD_ID, NUM_KEYWORDS, PAD, FactGrammar, GrammarState,
                                     decode_actions, encode_target, sentence_order, tokenize)
from paddle_suite.registry import ARCHS

GRAPHS = ("auto", "dependency", "adjacency", "none")
PATHS = ("learned", "neighbours")
PATH_RADIUS = 4     # signed graph distances -4..4 get their own weight; farther ones share the end ones
PATH_INIT_FAR = 5.0  # initial weight -5 beyond one arc: the learned path starts as the neighbours one
NEG_INF = -1e9


def dependency_arcs(length, heads):
    """Symmetric 0/1 (length x length) matrix of the dependency arcs, ``heads`` one head index per
    token (-1 for the root); raises on a head outside the sentence."""
    if len(heads) != length:
        raise ValueError(f"{len(heads)} dependency heads for {length} tokens")
    heads = np.asarray(heads, dtype="int64")
    outside = np.flatnonzero((heads >= length) | (heads < -1))
    if outside.size:
        child = int(outside[0])
        raise ValueError(f"head {heads[child]} of token {child} is outside the sentence (0..{length - 1}, -1 = root)")
    child = np.flatnonzero(heads >= 0)
    arcs = np.zeros([length, length], dtype="int8")
    arcs[child, heads[child]] = arcs[heads[child], child] = 1
    return arcs


def sentence_distances(length, heads=None):
    """Signed graph distances (length x length, int64) clipped to ``+-PATH_RADIUS``: the number of
    arcs on the shortest path from token i to token j (dependency arcs, else adjacent tokens),
    negative when j comes before i. Tokens the arcs do not connect are ``PATH_RADIUS`` apart.
    Both path readings read this one structure (``neighbours``: distance at most 1)."""
    position = np.arange(length)
    offset = position[None, :] - position[:, None]
    if heads is None:
        hops = np.abs(offset)
    else:
        hops = shortest_path(csr_matrix(dependency_arcs(length, heads)), unweighted=True, directed=False)
        hops = np.where(np.isfinite(hops), hops, PATH_RADIUS)
    return (np.sign(offset) * np.minimum(hops, PATH_RADIUS)).astype("int64")


def graph_distances(length, heads, graph_mode, where="sentence"):
    """:func:`sentence_distances` over the arcs ``graph_mode`` reads: the dependency arcs under
    ``auto`` (when the sentence has heads) and ``dependency``, else the word order. ``where`` names
    the sentence in the error raised when ``dependency`` finds no heads."""
    if graph_mode == "dependency" and heads is None:
        raise ValueError(f"{where}: graph: dependency needs dependency heads for every sentence "
                         "(use graph: auto to fall back to the sentence adjacency)")
    return sentence_distances(length, heads if graph_mode in ("auto", "dependency") else None)


def coverage_loss(attention, coverage):
    """Per-example ``sum_i min(a_i, c_i)`` (B,) for one step."""
    return paddle.minimum(attention, coverage).sum(axis=-1)


@ARCHS.register("Logician")
class Logician(nn.Layer):
    """Arch keys: ``vocab_size`` (from the data), ``embedding_dim``, ``hidden_size``, ``rnn`` (gru|lstm),
    ``graph`` (auto|dependency|adjacency|none), ``path`` (learned|neighbours: how attention moves
    along the graph), ``coverage``, ``copy`` (restricted copy, else generation from the vocabulary),
    ``dropout``."""

    def __init__(self, vocab_size, embedding_dim=128, hidden_size=256, rnn="gru", graph="auto",
                 path="neighbours", coverage=True, copy=True, dropout=0.1):
        super().__init__()
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {rnn!r}")
        self.graph, self.path, self.use_coverage, self.use_copy = graph, path, coverage, copy
        self.vocab_size = vocab_size
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
        if path == "learned":
            init = np.where(np.abs(np.arange(-PATH_RADIUS, PATH_RADIUS + 1)) <= 1, 0.0, -PATH_INIT_FAR)
            self.path_weights = self.create_parameter(
                [2 * PATH_RADIUS + 1], default_initializer=nn.initializer.Assign(init.astype("float32")))
        if copy:
            self.keyword_out = nn.Linear(hidden_size + memory, NUM_KEYWORDS)
            self.copy_gate = nn.Linear(hidden_size + memory + embedding_dim, 1)
        else:  # keywords and vocabulary words from one softmax
            self.generator = nn.Linear(hidden_size + memory, NUM_KEYWORDS + vocab_size)
        self.dropout = nn.Dropout(dropout)
        # Never emitted: padding and the start symbol (and the padding word when generating).
        mask = np.zeros([NUM_KEYWORDS if copy else NUM_KEYWORDS + vocab_size], dtype=np.float32)
        mask[[KEYWORD_ID[PAD], KEYWORD_ID[BOS]]] = NEG_INF
        if not copy:
            mask[NUM_KEYWORDS] = NEG_INF
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

    def path_transition(self, distance, src_mask):
        """``G`` (B, L, L) from the batch's signed graph distances (B, L, L), over each sentence's
        tokens: equal parts to the tokens at most one arc away (``neighbours``), or the softmax of
        the learnt weights of the distances (``learned``)."""
        if self.path == "neighbours":
            near = (paddle.abs(distance) <= 1).astype("float32") * src_mask.unsqueeze(1)
            return near / near.sum(axis=-1, keepdim=True)
        scores = F.embedding(distance.astype("int64") + PATH_RADIUS, self.path_weights.unsqueeze(-1)).squeeze(-1)
        return F.softmax(scores + (1.0 - src_mask.unsqueeze(1)) * NEG_INF, axis=-1)

    def step(self, input_emb, hidden, state, memory, memory_proj, src_mask, transition):
        """One decoder step -> (output distribution (B, K+L), or (B, K+V) without copy, new hidden,
        new state, {"coverage": coverage loss (B,), "gate": the gate's weight on content attention (B,),
        with a dependency path only})."""
        hidden, _ = self.decoder(paddle.concat([input_emb, state["context"]], axis=-1), hidden)
        coverage = state["coverage"]
        score = self.attn_memory_score(memory_proj, hidden, coverage)
        score = score + (1.0 - src_mask) * NEG_INF
        attention = F.softmax(score, axis=-1)
        terms = {}
        if transition is not None:
            moved = paddle.bmm(state["attention"].unsqueeze(1), transition).squeeze(1)
            gate = F.sigmoid(self.dep_gate(paddle.concat([hidden, state["context"]], axis=-1)))
            attention = gate * attention + (1.0 - gate) * moved
            terms["gate"] = gate.squeeze(-1)
        context = paddle.bmm(attention.unsqueeze(1), memory).squeeze(1)
        features = paddle.concat([hidden, context], axis=-1)
        if self.use_copy:
            keyword_probs = F.softmax(self.keyword_out(self.dropout(features)) + self.keyword_mask, axis=-1)
            p_keyword = F.sigmoid(self.copy_gate(paddle.concat([features, input_emb], axis=-1)))
            distribution = paddle.concat([p_keyword * keyword_probs, (1.0 - p_keyword) * attention], axis=-1)
        else:
            distribution = F.softmax(self.generator(self.dropout(features)) + self.keyword_mask, axis=-1)
        terms["coverage"] = coverage_loss(attention, coverage)
        new_state = {"context": context, "attention": attention,
                     "coverage": coverage + attention if self.use_coverage else coverage}
        return distribution, hidden, new_state, terms

    def attn_memory_score(self, memory_proj, hidden, coverage):
        energy = memory_proj + self.attn_state(hidden).unsqueeze(1)
        if self.use_coverage:  # w_c * c_t,i as a broadcast product: a (.., 1) x (1, h) matmul is slower
            energy = energy + coverage.unsqueeze(-1) * self.attn_coverage.weight[0]
        return self.attn_v(paddle.tanh(energy)).squeeze(-1)

    # ------------------------------------------------------------------ training
    def forward(self, batch, coverage_weight=1.0):
        """Teacher-forced loss; returns (loss, {"nll": ..., "coverage": ...}), plus ``"gate"``, the mean
        weight the dependency gate gives content attention over the target steps (with a gate only:
        near 1 means the model learnt to ignore the dependency path)."""
        if self.graph != "none" and batch["graph_mode"] != self.graph:
            raise ValueError(f"batch built with graph_mode={batch['graph_mode']!r} for a model with "
                             f"graph={self.graph!r}: pass make_batch(..., graph_mode=model.graph)")
        src_mask = batch["src_mask"]
        memory, memory_proj, hidden = self.encode(batch["src_ids"], src_mask)
        transition = self.path_transition(batch["distance"], src_mask) if self.graph != "none" else None
        state = self.init_state(memory, src_mask)
        inputs = self.embed_inputs(batch["tgt_in"])
        steps = batch["tgt_in"].shape[1]
        nll, cov, gates = [], [], []
        for t in range(steps):
            distribution, hidden, state, step_terms = self.step(inputs[:, t], hidden, state, memory, memory_proj,
                                                                src_mask, transition)
            if self.use_copy:
                gold = (distribution * batch["tgt_gold"][:, t]).sum(axis=-1)
            else:
                gold = paddle.take_along_axis(distribution, batch["tgt_index"][:, t:t + 1], axis=1).squeeze(-1)
            nll.append(-paddle.log(paddle.clip(gold, min=1e-12)))
            cov.append(step_terms["coverage"])
            if "gate" in step_terms:
                gates.append(step_terms["gate"])
        mask = batch["tgt_mask"]
        denominator = mask.sum()
        nll = (paddle.stack(nll, axis=1) * mask).sum() / denominator
        cov = (paddle.stack(cov, axis=1) * mask).sum() / denominator
        loss = nll + coverage_weight * cov if self.use_coverage else nll
        terms = {"nll": nll, "coverage": cov}
        if gates:
            terms["gate"] = ((paddle.stack(gates, axis=1) * mask).sum() / denominator).detach()
        return loss, terms

    # ------------------------------------------------------------------ decoding
    @paddle.no_grad()
    def beam_search(self, src_ids, distances, tokens=None, beam_size=4, max_steps=60, length_penalty=1.0):
        """Best grammatical action sequence for one sentence (``src_ids``: its word ids; ``distances``:
        :func:`graph_distances` it; ``tokens``: its tokens, so repeated words are merged; without them
        equal ids are merged)."""
        return self.beam_search_batch([(src_ids, distances, tokens)], beam_size, max_steps, length_penalty)[0]

    @paddle.no_grad()
    def beam_search_batch(self, sources, beam_size=4, max_steps=60, length_penalty=1.0):
        """Best grammatical action sequence per sentence; ``sources`` is a list of ``(src_ids, distances,
        tokens)``, ``distances`` the signed graph distances of :func:`graph_distances`. Actions are
        ``("kw", keyword id)`` and ``("copy", source position)``; without copy, ``("copy", word id)``
        names the vocabulary word generated."""
        count, width = len(sources), max(len(ids) for ids, _, _ in sources)
        ids = np.zeros([count, width], dtype="int64")
        mask = np.zeros([count, width], dtype="float32")
        distances = np.zeros([count, width, width], dtype="int64")
        first_position = np.tile(np.arange(width), (count, 1))  # padding maps to itself (probability 0)
        for s, (src_ids, sentence_distance, tokens) in enumerate(sources):
            length = len(src_ids)
            keys = tokens if tokens is not None else src_ids
            if len(keys) != length:
                raise ValueError(f"{len(keys)} tokens for {length} word ids")
            first_of = {}
            first_position[s, :length] = [first_of.setdefault(key, i) for i, key in enumerate(keys)]
            ids[s, :length], mask[s, :length] = src_ids, 1.0
            distances[s, :length, :length] = sentence_distance
        if self.use_copy:  # one action per distinct word: its first position
            word_ok = (first_position == np.arange(width)) & (mask > 0)
        else:  # any vocabulary word but padding
            word_ok = np.broadcast_to(np.arange(self.vocab_size) > 0, (count, self.vocab_size))
        src_mask = paddle.to_tensor(mask)
        memory, memory_proj, hidden = self.encode(paddle.to_tensor(ids), src_mask)
        transition = self.path_transition(paddle.to_tensor(distances), src_mask) if self.graph != "none" else None
        state = self.init_state(memory, src_mask)
        grammar, masks = FactGrammar(), {}

        def keyword_mask(gstate):  # additive mask of the keywords a grammar state allows, cached
            if gstate not in masks:
                keywords, copy_ok = grammar.allowed(gstate)
                allowed = np.full(NUM_KEYWORDS, -np.inf)
                allowed[keywords] = 0.0
                masks[gstate] = allowed, copy_ok
            return masks[gstate]

        # One row per live hypothesis: (sentence, actions, log-prob, grammar state), grouped by sentence.
        rows = [(s, [], 0.0, GrammarState()) for s in range(count)]
        last_input = [KEYWORD_ID[BOS]] * count
        finished = [[] for _ in range(count)]
        best_prefix = [[] for _ in range(count)]
        for _ in range(max_steps):
            sentence_of = np.asarray([row[0] for row in rows])
            index = paddle.to_tensor(sentence_of)
            distribution, hidden, state, _ = self.step(
                self.embed_inputs(paddle.to_tensor(np.asarray(last_input, dtype="int64"))), hidden, state,
                paddle.gather(memory, index), paddle.gather(memory_proj, index), paddle.gather(src_mask, index),
                None if transition is None else paddle.gather(transition, index))
            probs = distribution.numpy()
            if self.use_copy:
                # A word's probability is the sum over every position holding it (as in the loss);
                # it is credited to its first position and the other positions are closed.
                merged = np.zeros_like(probs[:, NUM_KEYWORDS:])
                flat = np.arange(len(rows))[:, None] * width + first_position[sentence_of]
                np.add.at(merged.reshape(-1), flat.reshape(-1), probs[:, NUM_KEYWORDS:].reshape(-1))
                probs[:, NUM_KEYWORDS:] = merged
            scores = np.log(np.maximum(probs, 1e-30))
            for r, (s, _, score, gstate) in enumerate(rows):
                allowed, copy_ok = keyword_mask(gstate)
                scores[r, :NUM_KEYWORDS] += allowed + score
                scores[r, NUM_KEYWORDS:] = np.where(word_ok[s] & copy_ok, scores[r, NUM_KEYWORDS:] + score, -np.inf)
            new_rows, parents, inputs = [], [], []
            start = 0
            while start < len(rows):  # each sentence's rows in turn
                s = rows[start][0]
                stop = start
                while stop < len(rows) and rows[stop][0] == s:
                    stop += 1
                candidates = scores[start:stop].reshape(-1)
                keep = min(2 * beam_size, candidates.size)
                top = np.argpartition(-candidates, keep - 1)[:keep]
                kept = 0
                for flat in top[np.argsort(-candidates[top], kind="stable")]:
                    b, j = divmod(int(flat), scores.shape[1])
                    score = float(candidates[flat])
                    if not np.isfinite(score):
                        break
                    parent = rows[start + b]
                    action = ("kw", j) if j < NUM_KEYWORDS else ("copy", j - NUM_KEYWORDS)
                    actions = parent[1] + [action]
                    gstate = grammar.advance(parent[3], action)
                    if gstate.phase == "done":
                        finished[s].append((actions, score / len(actions) ** length_penalty))
                        continue
                    new_rows.append((s, actions, score, gstate))
                    parents.append(start + b)
                    if j < NUM_KEYWORDS:
                        inputs.append(j)
                    else:
                        word = j - NUM_KEYWORDS
                        inputs.append(NUM_KEYWORDS + int(ids[s, word] if self.use_copy else word))
                    kept += 1
                    if kept == beam_size:
                        break
                if kept and self._search_is_over(finished[s], new_rows[-kept:], beam_size, length_penalty):
                    del new_rows[-kept:], parents[-kept:], inputs[-kept:]
                elif kept:
                    best_prefix[s] = new_rows[-kept][1]
                start = stop
            if not new_rows:
                break
            index = paddle.to_tensor(np.asarray(parents, dtype="int64"))
            hidden = paddle.gather(hidden, index)
            state = {k: paddle.gather(v, index) for k, v in state.items()}
            rows, last_input = new_rows, inputs
        # A sentence without a finished hypothesis (length limit) gets its best prefix;
        # decode_actions drops an open fact.
        return [max(done, key=lambda item: item[1])[0] if done else prefix
                for done, prefix in zip(finished, best_prefix)]

    @staticmethod
    def _search_is_over(finished, live, beam_size, length_penalty):
        """True when ``beam_size`` hypotheses have finished and no live one scores above the
        ``beam_size``-th best of them, even at its current length (the usual heuristic; stopping at
        the first ``beam_size`` finished ones favours the shortest outputs: one fact a sentence)."""
        if len(finished) < beam_size:
            return False
        kth_best = sorted((score for _, score in finished), reverse=True)[beam_size - 1]
        best_live = max(score / (len(actions) ** length_penalty) for _, actions, score, _ in live)
        return best_live <= kth_best

    def extract(self, sentence, vocab, language, heads=None, **beam_options):
        """SAOKE facts for one sentence."""
        return self.extract_batch([sentence], vocab, language, None if heads is None else [heads], **beam_options)[0]

    def extract_batch(self, sentences, vocab, language, heads=None, **beam_options):
        """SAOKE facts for each sentence, decoded together (``heads``: one list per sentence, or None)."""
        tokens = [tokenize(sentence, language) for sentence in sentences]
        heads = heads or [None] * len(sentences)
        todo = [i for i, t in enumerate(tokens) if t]
        facts = [[] for _ in sentences]
        if not todo:
            return facts
        was_training = self.training
        self.eval()
        try:
            actions = self.beam_search_batch(
                [(vocab.ids(tokens[i]), graph_distances(len(tokens[i]), heads[i], self.graph), tokens[i]) for i in todo],
                **beam_options)
        finally:
            if was_training:
                self.train()
        for i, sequence in zip(todo, actions):
            facts[i] = decode_actions(sequence, tokens[i] if self.use_copy else vocab.itos, language)
        return facts

def make_batch(examples, vocab, language, graph_mode="auto", fact_order="sentence"):
    """Padded tensors for teacher forcing from :class:`paddle_suite.oie.readers.Example` objects.

    ``tgt_gold[b, t]`` marks every action spelling the gold token at step t: its keyword, or
    every source position holding the copied word; ``tgt_index[b, t]`` is the one action of a model
    without copy (the keyword, or ``len(KEYWORDS) + word id``). ``graph_mode`` must be the model's
    ``graph``. ``fact_order``: ``sentence`` spells a sentence's facts in the order they are said
    (:func:`paddle_suite.oie.tokens.sentence_order`), ``as_read`` in the order of the data file.
    ``distance`` holds each sentence's signed graph distances (:func:`graph_distances`), which
    both path readings read. Returns (batch dict, unreachable token count).
    """
    if graph_mode not in GRAPHS:
        raise ValueError(f"graph_mode must be one of {GRAPHS}, got {graph_mode!r}")
    if fact_order not in FACT_ORDERS:
        raise ValueError(f"fact_order must be one of {FACT_ORDERS}, got {fact_order!r}")
    sources, targets, distances, unreachable = [], [], [], 0
    for example in examples:
        tokens = tokenize(example.sentence, language)
        if not tokens:
            raise ValueError(f"{example.source or 'example'}: empty sentence")
        facts = sentence_order(example.facts, tokens, language) if fact_order == "sentence" else example.facts
        encoded = encode_target(facts, tokens, language)
        unreachable += encoded.unreachable
        sources.append(tokens)
        targets.append(encoded.actions)
        distances.append(graph_distances(len(tokens), getattr(example, "heads", None), graph_mode,
                                         example.source or "example"))
    batch, max_len, max_tgt = len(examples), max(map(len, sources)), max(map(len, targets))
    src_ids = np.zeros([batch, max_len], dtype="int64")
    src_mask = np.zeros([batch, max_len], dtype="float32")
    distance = np.zeros([batch, max_len, max_len], dtype="int64")
    tgt_in = np.full([batch, max_tgt], KEYWORD_ID[PAD], dtype="int64")
    tgt_gold = np.zeros([batch, max_tgt, NUM_KEYWORDS + max_len], dtype="float32")
    tgt_mask = np.zeros([batch, max_tgt], dtype="float32")
    tgt_index = np.full([batch, max_tgt], KEYWORD_ID[PAD], dtype="int64")
    for b, (tokens, actions, d) in enumerate(zip(sources, targets, distances)):
        word_ids = np.asarray(vocab.ids(tokens))
        length = len(tokens)
        src_ids[b, :length] = word_ids
        src_mask[b, :length] = 1.0
        distance[b, :length, :length] = d
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
            tgt_index[b, t] = previous
    tensors = {"src_ids": src_ids, "src_mask": src_mask, "distance": distance, "tgt_in": tgt_in,
               "tgt_gold": tgt_gold, "tgt_mask": tgt_mask, "tgt_index": tgt_index}
    tensors = {k: paddle.to_tensor(v) for k, v in tensors.items()}
    tensors["graph_mode"] = graph_mode
    return tensors, unreachable

