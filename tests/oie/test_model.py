"""Logician: distribution sums to one, coverage loss, graphs, target grammar, beam search, training."""
import numpy as np
import paddle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paddle_suite.oie.model import (PATH_RADIUS, Logician, coverage_loss, dependency_arcs, graph_distances,
                                   make_batch, sentence_distances)
from paddle_suite.oie.readers import Example
from paddle_suite.oie.saoke import Fact, parse_facts, serialize_facts
from paddle_suite.oie.tokens import (KEYWORD_ID, KEYWORDS, NUM_KEYWORDS, FactGrammar, GrammarState, Vocab,
                                     decode_actions, encode_target, sentence_order, tokenize)

SENTENCES = [
    Example("李白出生于碎叶城，是唐代诗人。", parse_facts("(李白, 出生于, 碎叶城) (李白, ISA, [唐代|诗人])")),
    Example("萨克斯是乐器。", parse_facts("(萨克斯, ISA, 乐器)")),
    Example("他在北京工作。", parse_facts("(他, 工作, _, @PLACE=北京)")),
]


def tiny_model(graph="auto", coverage=True, seed=0, rnn="gru", copy=True, path="neighbours"):
    paddle.seed(seed)
    vocab = Vocab.build([tokenize(e.sentence, "zh") for e in SENTENCES])
    model = Logician(len(vocab), embedding_dim=16, hidden_size=24, rnn=rnn, graph=graph, path=path,
                     coverage=coverage, copy=copy, dropout=0.0)
    return model, vocab


def decoder_steps(model, batch, steps=5):
    """(distribution, state, terms) of ``model.step`` over the teacher-forced inputs of ``batch``."""
    src_mask = batch["src_mask"]
    memory, memory_proj, hidden = model.encode(batch["src_ids"], src_mask)
    state = model.init_state(memory, src_mask)
    transition = model.path_transition(batch["distance"], src_mask) if model.graph != "none" else None
    inputs = model.embed_inputs(batch["tgt_in"])
    for t in range(steps):
        distribution, hidden, state, terms = model.step(inputs[:, t], hidden, state, memory, memory_proj, src_mask,
                                                        transition)
        yield distribution, state, terms


def run_steps(model, batch, steps=5):
    return [(distribution.numpy(), state["attention"].numpy(), terms["coverage"].numpy())
            for distribution, state, terms in decoder_steps(model, batch, steps)]


@pytest.mark.parametrize("graph, coverage, rnn, copy, path", [("auto", True, "gru", True, "neighbours"),
                                                              ("auto", True, "gru", True, "learned"),
                                                              ("none", True, "gru", True, "neighbours"),
                                                              ("adjacency", False, "lstm", True, "learned"),
                                                              ("none", False, "gru", False, "neighbours")])
def test_output_distribution_sums_to_one(graph, coverage, rnn, copy, path):
    model, vocab = tiny_model(graph, coverage, rnn=rnn, copy=copy, path=path)
    batch, _ = make_batch(SENTENCES, vocab, "zh", graph)
    lengths = batch["src_mask"].numpy().sum(axis=1).astype(int)
    for distribution, attention, _ in run_steps(model, batch):
        np.testing.assert_allclose(distribution.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-5)
        assert (distribution >= 0).all()
        assert np.abs(distribution[:, [KEYWORD_ID["<pad>"], KEYWORD_ID["<bos>"]]]).max() < 1e-8
        if not copy:  # keywords + vocabulary words; never the padding word
            assert distribution.shape[1] == NUM_KEYWORDS + len(vocab)
            assert np.abs(distribution[:, NUM_KEYWORDS]).max() < 1e-8
            continue
        for b, length in enumerate(lengths):  # no copy mass on padding positions
            assert np.abs(distribution[b, NUM_KEYWORDS + length:]).max(initial=0.0) < 1e-8


def test_without_copy_the_loss_scores_the_generated_word():
    model, vocab = tiny_model(graph="none", coverage=False, copy=False)
    batch, _ = make_batch(SENTENCES, vocab, "zh", "none")
    index, mask = batch["tgt_index"].numpy(), batch["tgt_mask"].numpy()
    outputs = run_steps(model, batch, steps=index.shape[1])
    expected = -np.mean([np.log(outputs[t][0][b, index[b, t]]) for b, t in zip(*np.nonzero(mask))])
    loss, parts = model(batch)
    assert float(parts["nll"]) == pytest.approx(expected, rel=1e-5)
    assert float(parts["coverage"]) == 0.0 and float(loss) == pytest.approx(expected, rel=1e-5)
    # the word part of tgt_index is the source word's vocabulary id
    src = batch["src_ids"].numpy()[0]
    assert index[0, 1] == NUM_KEYWORDS + src[0]  # "(" then the first character of 李白
    facts = model.extract(SENTENCES[0].sentence, vocab, "zh", beam_size=2, max_steps=30)
    assert parse_facts(serialize_facts(facts)) == facts


@pytest.mark.parametrize("copy, path", [(True, "neighbours"), (True, "learned"), (False, "neighbours")])
def test_batched_beam_search_equals_one_sentence_at_a_time(copy, path):
    graph = "auto" if copy else "none"
    model, vocab = tiny_model(copy=copy, graph=graph, path=path)
    # a few steps on the three sentences, so decoding goes past an immediate <eos>
    optimizer = paddle.optimizer.Adam(learning_rate=0.02, parameters=model.parameters())
    batch, _ = make_batch(SENTENCES, vocab, "zh", graph)
    for _ in range(30):
        model(batch)[0].backward()
        optimizer.step()
        optimizer.clear_grad()
    sentences = [e.sentence for e in SENTENCES] + ["", "李白是诗人李白"]
    together = model.extract_batch(sentences, vocab, "zh", beam_size=3, max_steps=25)
    alone = [model.extract(s, vocab, "zh", beam_size=3, max_steps=25) for s in sentences]
    assert together == alone and together[3] == []
    assert sum(map(len, together)) >= 2
    with paddle.no_grad():
        model.eval()
        sources = [(vocab.ids(list(s)), graph_distances(len(s), None, model.graph), list(s)) for s in sentences if s]
        actions = model.beam_search_batch(sources, beam_size=3, max_steps=25)
    assert actions == [model.beam_search(*source, beam_size=3, max_steps=25) for source in sources]


def test_coverage_loss_is_zero_on_fresh_words_and_grows_on_revisits():
    eye = paddle.eye(4)
    coverage = paddle.zeros([1, 4])
    fresh = []
    for t in range(4):
        fresh.append(coverage_loss(eye[t:t + 1], coverage).item())
        coverage = coverage + eye[t:t + 1]
    assert fresh == [0.0, 0.0, 0.0, 0.0]
    assert coverage_loss(eye[1:2], coverage).item() == 1.0  # attending word 1 again
    spread = paddle.full([1, 4], 0.25)
    assert coverage_loss(spread, spread * 2).item() == pytest.approx(1.0)


def test_model_coverage_term_starts_at_zero_and_has_gradients():
    model, vocab = tiny_model()
    batch, _ = make_batch(SENTENCES, vocab, "zh")
    outputs = run_steps(model, batch, steps=3)
    assert np.abs(outputs[0][2]).max() == 0.0 and (outputs[2][2] > 0).all()
    loss, parts = model(batch, coverage_weight=1.0)
    loss.backward()
    assert float(parts["coverage"]) > 0 and np.isfinite(float(loss))
    assert float(model.attn_coverage.weight.grad.abs().sum()) > 0
    assert float(model.dep_gate.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="graph_mode='adjacency' for a model with graph='auto'"):
        model(make_batch(SENTENCES, vocab, "zh", "adjacency")[0])


def test_the_gate_term_is_its_mean_weight_on_content_attention_over_target_steps():
    model, vocab = tiny_model()
    batch, _ = make_batch(SENTENCES, vocab, "zh")
    gates = np.stack([terms["gate"].numpy() for _, _, terms in decoder_steps(model, batch, batch["tgt_in"].shape[1])],
                     axis=1)
    mask = batch["tgt_mask"].numpy()
    assert float(model(batch)[1]["gate"]) == pytest.approx((gates * mask).sum() / mask.sum(), rel=1e-5)
    paddle.assign(paddle.full([1], 30.0), model.dep_gate.bias)  # a gate shut on the dependency path
    assert float(model(batch)[1]["gate"]) == pytest.approx(1.0, abs=1e-6)
    ungated, vocab = tiny_model(graph="none")
    assert "gate" not in ungated(make_batch(SENTENCES, vocab, "zh", "none")[0])[1]


def neighbours_path(distances):
    """The neighbours transition of one unpadded sentence, as the model computes it."""
    model, _ = tiny_model()
    length = len(distances)
    return model.path_transition(paddle.to_tensor(distances[None]), paddle.ones([1, length])).numpy()[0]


def test_neighbours_path_splits_attention_evenly_over_a_token_and_its_arcs():
    chain = neighbours_path(sentence_distances(4))
    np.testing.assert_allclose(chain, [[1 / 2, 1 / 2, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0, 1 / 3, 1 / 3, 1 / 3],
                                       [0, 0, 1 / 2, 1 / 2]], rtol=1e-6)
    np.testing.assert_allclose(neighbours_path(sentence_distances(4, heads=[1, -1, 1, 2])), chain, rtol=1e-6)
    star = neighbours_path(sentence_distances(4, heads=[-1, 0, 0, 0]))
    np.testing.assert_allclose(star[0], 0.25, rtol=1e-6)
    np.testing.assert_allclose(star[1], [0.5, 0.5, 0, 0], rtol=1e-6)  # siblings are two arcs apart
    assert dependency_arcs(4, [-1, 0, 0, 0]).tolist() == [[0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="head 5 of token 2 is outside the sentence"):
        dependency_arcs(3, [-1, 0, 5])
    with pytest.raises(ValueError, match="2 dependency heads for 3 tokens"):
        dependency_arcs(3, [-1, 0])


def test_sentence_distances_are_signed_graph_hops_clipped_to_the_radius():
    chain = sentence_distances(7)
    assert chain[0].tolist() == [0, 1, 2, 3, 4, 4, 4] and chain[3].tolist() == [-3, -2, -1, 0, 1, 2, 3]
    np.testing.assert_array_equal(chain, -chain.T)
    star = sentence_distances(4, heads=[-1, 0, 0, 0])  # siblings are two arcs apart, in word order
    assert star[0].tolist() == [0, 1, 1, 1] and star[2].tolist() == [-1, -2, 0, 2]
    np.testing.assert_array_equal(sentence_distances(4, heads=[1, -1, 1, 2]), sentence_distances(4))
    assert sentence_distances(3, heads=[-1, -1, 1])[0].tolist() == [0, PATH_RADIUS, PATH_RADIUS]  # not connected
    with pytest.raises(ValueError, match="outside the sentence"):
        sentence_distances(3, heads=[-1, 0, 5])


def test_learned_path_starts_as_the_neighbours_path_and_learns():
    model, vocab = tiny_model(path="learned")
    batch, _ = make_batch(SENTENCES, vocab, "zh", "auto")
    learned = model.path_transition(batch["distance"], batch["src_mask"]).numpy()
    neighbours = tiny_model()[0].path_transition(batch["distance"], batch["src_mask"]).numpy()
    lengths = batch["src_mask"].numpy().sum(axis=1).astype(int)
    for b, length in enumerate(lengths):
        np.testing.assert_allclose(learned[b, :length].sum(axis=1), 1.0, rtol=1e-5)
        assert np.abs(learned[b, :, length:]).sum() < 1e-8  # nothing moves onto padding
        np.testing.assert_allclose(learned[b, :length, :length], neighbours[b, :length, :length], atol=0.03)
    model(batch)[0].backward()
    grad = model.path_weights.grad.numpy()
    assert grad.shape == (2 * PATH_RADIUS + 1,) and np.abs(grad).max() > 0
    with pytest.raises(ValueError, match="path must be one of"):
        Logician(len(vocab), path="shortest")


def test_dependency_arcs_change_attention_only_when_the_graph_is_on():
    examples = [Example("甲乙丙丁", [Fact("甲", "乙", ("丙",))])]
    with_arcs = [Example("甲乙丙丁", [Fact("甲", "乙", ("丙",))], heads=[-1, 0, 0, 0])]
    for graph, differs in (("auto", True), ("none", False)):
        model, _ = tiny_model(graph)
        vocab = Vocab.build([list("甲乙丙丁")])
        a = run_steps(model, make_batch(examples, vocab, "zh", graph)[0], steps=3)[-1][1]
        b = run_steps(model, make_batch(with_arcs, vocab, "zh", graph)[0], steps=3)[-1][1]
        assert (np.abs(a - b).max() > 1e-6) == differs
    with pytest.raises(ValueError, match="needs dependency heads"):
        make_batch(examples, vocab, "zh", "dependency")
    with pytest.raises(ValueError, match="sentence 3: graph: dependency needs dependency heads"):
        graph_distances(4, None, "dependency", "sentence 3")


def test_gold_marks_every_position_of_a_repeated_word():
    example = Example("甲乙甲", [Fact("甲", "乙", ("甲",))])
    vocab = Vocab.build([list("甲乙")])
    batch, unreachable = make_batch([example], vocab, "zh")
    gold = batch["tgt_gold"].numpy()[0]
    assert unreachable == 0
    assert gold[1, NUM_KEYWORDS:].tolist() == [1.0, 0.0, 1.0]  # step 1 spells the subject 甲
    assert (gold[batch["tgt_mask"].numpy()[0] > 0].sum(axis=1) >= 1).all()


def test_targets_of_real_span_data_decode_back(shared_data):
    from paddle_suite.oie.readers import spansaoke_split

    for example in spansaoke_split("dev", shared_data / "oie" / "spansaoke")[:300]:
        tokens = tokenize(example.sentence, "zh")
        encoded = encode_target(example.facts, tokens, "zh")
        assert encoded.unreachable == 0
        assert decode_actions(encoded.actions, tokens, "zh") == example.facts


def test_english_targets_decode_back(shared_data):
    from paddle_suite.oie.readers import oie2016_split

    checked = 0
    for example in oie2016_split("dev", shared_data / "oie" / "oie2016" / "oie_corpus")[:200]:
        tokens = tokenize(example.sentence, "en")
        encoded = encode_target(example.facts, tokens, "en")
        if encoded.unreachable == 0:
            assert decode_actions(encoded.actions, tokens, "en") == example.facts
            checked += 1
    assert checked >= 90  # 100 of these 200: OIE2016 predicates often add words ("might", "is")


def test_beam_search_copies_each_repeated_word_from_its_first_position():
    model, _ = tiny_model()
    vocab = Vocab.build([list("甲乙")])
    tokens = list("甲乙甲乙甲乙")
    actions = model.beam_search(vocab.ids(tokens), sentence_distances(len(tokens)), tokens, beam_size=3, max_steps=30)
    copied = [position for kind, position in actions if kind == "copy"]
    assert set(copied) <= {0, 1}


def test_unreachable_words_become_unk():
    encoded = encode_target(parse_facts("(李白, 是, 诗仙)"), list("李白是诗人"), "zh")
    assert encoded.unreachable == 1
    assert ("kw", KEYWORD_ID["<unk>"]) in encoded.actions


def test_grammar_rejects_malformed_prefixes():
    grammar = FactGrammar()
    kw = lambda name: ("kw", KEYWORD_ID[name])  # noqa: E731
    with pytest.raises(ValueError, match="cannot follow"):
        grammar.advance(GrammarState(), kw(")"))
    state = GrammarState()
    for action in [kw("("), ("copy", 0), kw(","), ("copy", 1)]:
        state = grammar.advance(state, action)
    with pytest.raises(ValueError, match="cannot follow"):
        grammar.advance(state, kw(")"))  # only two arguments so far


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10 ** 6), min_size=1, max_size=60))
def test_random_grammatical_walks_decode_to_well_formed_facts(choices):
    """Any action sequence the grammar allows spells facts that serialise and parse back."""
    tokens = list("李白是诗人")
    grammar, state, actions = FactGrammar(), GrammarState(), []
    for choice in choices:
        keywords, copy_ok = grammar.allowed(state)
        options = [("kw", k) for k in keywords] + ([("copy", i) for i in range(len(tokens))] if copy_ok else [])
        action = options[choice % len(options)]
        actions.append(action)
        state = grammar.advance(state, action)
        if state.phase == "done":
            break
    facts = decode_actions(actions, tokens, "zh")
    assert parse_facts(serialize_facts(facts)) == facts
    assert all(KEYWORDS[v] != "<bos>" for kind, v in actions if kind == "kw")


@pytest.mark.parametrize("max_steps", [3, 40])
def test_beam_search_returns_well_formed_facts(max_steps):
    model, vocab = tiny_model()
    for example in SENTENCES:
        facts = model.extract(example.sentence, vocab, "zh", beam_size=3, max_steps=max_steps)
        assert all(isinstance(f, Fact) for f in facts)
        assert parse_facts(serialize_facts(facts)) == facts
    assert model.training  # extract restores the training mode


@pytest.mark.slow
def test_training_on_real_span_data_lowers_the_loss(shared_data):
    from paddle_suite.oie.readers import spansaoke_split

    examples = [e for e in spansaoke_split("dev", shared_data / "oie" / "spansaoke") if len(e.sentence) <= 40][:200]
    assert len(examples) == 200
    paddle.seed(0)
    rng = np.random.default_rng(0)
    vocab = Vocab.build([tokenize(e.sentence, "zh") for e in examples])
    model = Logician(len(vocab), embedding_dim=32, hidden_size=64, dropout=0.0)
    optimizer = paddle.optimizer.Adam(learning_rate=3e-3, parameters=model.parameters())
    losses = []
    for _ in range(40):  # the longer run through tools/train.py is tests/oie/test_task.py's
        batch, _ = make_batch([examples[i] for i in rng.choice(len(examples), 16, replace=False)], vocab, "zh")
        loss, parts = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(parts["nll"]))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.7 * first, (first, last)
    facts = model.extract(examples[0].sentence, vocab, "zh")
    assert parse_facts(serialize_facts(facts)) == facts


def test_beam_search_goes_on_while_a_live_hypothesis_can_still_win():
    # beam 2: two one-fact hypotheses finished (mean log-prob -1.0 and -1.2); a live two-fact
    # hypothesis at mean -0.5 must be followed, not cut off by the count of finished ones
    finished = [(["a"] * 10, -1.0), (["b"] * 10, -1.2)]
    live = [(0, ["c"] * 12, -6.0, None)]
    assert not Logician._search_is_over(finished, live, beam_size=2, length_penalty=1.0)
    worse = [(0, ["c"] * 12, -18.0, None)]  # mean -1.5: below the 2nd best finished one
    assert Logician._search_is_over(finished, worse, beam_size=2, length_penalty=1.0)
    assert not Logician._search_is_over(finished[:1], worse, beam_size=2, length_penalty=1.0)


def test_sentence_order_sorts_facts_as_the_sentence_says_them():
    tokens = list("十八营设元帅，元帅指挥作战。")
    read = parse_facts("(元帅, 指挥, 作战) (十八营, 设, 元帅)")  # the order of the data file's lines
    assert sentence_order(read, tokens, "zh") == read[::-1]
    # a shared subject: the predicates' positions decide; exact ties keep the file's order
    shared = parse_facts("(湖, 接, 江) (湖, 临, 海) (湖, 临, 海)")
    assert sentence_order(shared, list("湖临海，接江。"), "zh") == [shared[1], shared[2], shared[0]]
    # texts the sentence lacks, placeholders and symbols go after what it has
    words = "Paris is a city".split()
    odd = parse_facts("(X, ISA, Paris) (Paris, is, city) (Rome, was, _)")
    assert sentence_order(odd, words, "en") == [odd[1], odd[0], odd[2]]


def test_targets_spell_a_sentences_facts_in_sentence_order_unless_asked_otherwise():
    # the released span data lists a sentence's facts on scattered lines in no order; the
    # decoder must see them left to right or it cannot learn which fact comes next (nor whether one does)
    example = Example("十八营设元帅，元帅指挥作战。", parse_facts("(元帅, 指挥, 作战) (十八营, 设, 元帅)"))
    vocab = Vocab.build([tokenize(example.sentence, "zh")])
    tokens = tokenize(example.sentence, "zh")

    def spelled(fact_order):
        batch, _ = make_batch([example], vocab, "zh", fact_order=fact_order)
        gold = batch["tgt_gold"].numpy()[0][batch["tgt_mask"].numpy()[0] > 0]
        actions = [("kw", int(np.argmax(g[:NUM_KEYWORDS]))) if g[:NUM_KEYWORDS].any()
                   else ("copy", int(np.argmax(g[NUM_KEYWORDS:]))) for g in gold]
        return decode_actions(actions, tokens, "zh")

    assert spelled("sentence") == example.facts[::-1]
    assert spelled("as_read") == example.facts
    with pytest.raises(ValueError, match="fact_order"):
        make_batch([example], vocab, "zh", fact_order="random")


def test_real_span_data_targets_follow_the_sentence(shared_data):
    from paddle_suite.oie.readers import spansaoke_split

    examples = [e for e in spansaoke_split("dev", shared_data / "oie" / "spansaoke") if len(e.facts) > 1][:300]
    in_span_order = reordered = 0
    for example in examples:
        ordered = sentence_order(example.facts, tokenize(example.sentence, "zh"), "zh")
        assert sorted(map(repr, ordered)) == sorted(map(repr, example.facts))  # the same facts
        # the tagged spans say where each fact really is (a text may also occur earlier)
        starts = [min(start for role in example.spans[example.facts.index(f)] for start, _ in role) for f in ordered]
        in_span_order += starts == sorted(starts)
        reordered += ordered != example.facts
    assert in_span_order >= 0.9 * len(examples)  # 276 of 300
    assert reordered >= 150  # the file's order is not the sentence's: 225 of 300 change
