"""The oie task: configs, splits, deterministic batches, exact resume, the vocabulary artifact,
prediction and a short real training run through tools/train.py."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

import paddle_suite  # noqa: F401
from paddle_suite.config import ConfigError, load_config
from paddle_suite.engine import Trainer, restore_model
from paddle_suite.engine.run import read_metrics
from paddle_suite.oie.saoke import parse_facts
from paddle_suite.oie.task import OIETask, read_vocab

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
ARGS = types.SimpleNamespace(no_progress=True, split="test")
ABLATIONS = {"no_copy": {"copy": False}, "no_coverage": {"coverage": False}, "no_gate": {"graph": "none"},
             "seq2seq": {"copy": False, "coverage": False, "graph": "none"}}
TINY = {
    "Global": {"progress": False, "log_every": 1000, "max_steps": 4, "eval_every": 4, "save_every": 2,
               "test_split": None},
    "Arch": {"embedding_dim": 16, "hidden_size": 16, "dropout": 0.1},
    "DataLoader": {"train_subset": 60, "max_source_len": 30, "batch_size": 8, "eval_batch_size": 16,
                   "valid_subset": 6, "test_subset": 6},
    "Metric": {"beam_size": 2, "max_decode_len": 30},
}


def write_config(tmp_path, name="tiny", base="logician_saoke.yaml", **sections):
    values = {"_BASE_": str(CONFIGS / base), **{k: dict(v) for k, v in TINY.items()}}
    values["Global"]["output_dir"] = str(tmp_path / "out")
    for section, keys in sections.items():
        values.setdefault(section, {}).update(keys)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values, allow_unicode=True))
    return path


def params(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dataset", ["saoke", "oie2016"])
def test_configs_load_and_each_ablation_changes_only_its_switches(dataset):
    base = load_config(CONFIGS / f"logician_{dataset}.yaml")
    assert base["Global"]["task"] == "oie" and base["Arch"]["copy"] and base["Arch"]["coverage"]
    for name, switches in ABLATIONS.items():
        variant = load_config(CONFIGS / f"logician_{dataset}_{name}.yaml")
        changed = {k: v for k, v in variant["Arch"].items() if base["Arch"][k] != v}
        assert changed == switches, name
        assert variant["DataLoader"] == base["DataLoader"] and variant["Optimizer"] == base["Optimizer"]
        assert variant["Global"]["max_steps"] == base["Global"]["max_steps"]
    learned = load_config(CONFIGS / f"logician_{dataset}_learned_path.yaml")
    assert base["Arch"]["path"] == "neighbours"
    assert {k: v for k, v in learned["Arch"].items() if base["Arch"][k] != v} == {"path": "learned"}
    assert {k: v for k, v in learned["Optimizer"].items() if base["Optimizer"][k] != v} == {
        "param_groups": [{"match": "path_weights", "lr_mult": 20.0}]}


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="DataLoader.dataset.*'spansoke' is not one of.*Did you mean 'spansaoke'"):
        load_config(write_config(tmp_path), ["DataLoader.dataset=spansoke"])
    with pytest.raises(ConfigError, match="Metric.beam_sise: unknown key. Did you mean 'Metric.beam_size'"):
        load_config(write_config(tmp_path), ["Metric.beam_sise=3"])
    with pytest.raises(ConfigError, match="must include saoke_facts"):
        OIETask(load_config(write_config(tmp_path), ["Metric.names=[oie2016_lexical]"]))
    with pytest.raises(ConfigError, match="Metric.names: unknown metric 'oie2016_lexcal'. Did you mean 'oie2016_lexical'"):
        OIETask(load_config(write_config(tmp_path), ["Metric.names=[saoke_facts, oie2016_lexcal]"]))
    with pytest.raises(ConfigError, match="oie_tsv needs DataLoader.data_path"):
        OIETask(load_config(write_config(tmp_path), ["DataLoader.dataset=oie_tsv", "DataLoader.train_file=a.oie"])).splits()


def test_spansaoke_validation_is_a_seeded_hold_out_of_dev(tmp_path, shared_data):
    task = OIETask(load_config(write_config(tmp_path)))
    splits = task.splits()
    assert (len(splits["train"]), len(splits["valid"]), len(splits["test"])) == (2360 - 400, 400, 2384)
    assert not {e.sentence for e in splits["train"]} & {e.sentence for e in splits["valid"]}
    assert all("dev_4373" in e.source for e in splits["valid"]) and "test_4440" in splits["test"][0].source
    other_seed = OIETask(load_config(write_config(tmp_path), ["Global.seed=7"])).splits()
    assert [e.source for e in other_seed["valid"]] == [e.source for e in splits["valid"]]
    other_split = OIETask(load_config(write_config(tmp_path), ["DataLoader.split_seed=1"])).splits()
    assert [e.source for e in other_split["valid"]] != [e.source for e in splits["valid"]]


def test_saoke_json_lines_with_held_out_valid_and_test(tmp_path):
    from paddle_suite.oie.readers import Example, write_saoke_jsonl

    examples = [Example(f"甲{i}乙丙", parse_facts(f"(甲{i}, 乙, 丙)")) for i in range(30)]
    write_saoke_jsonl(tmp_path / "SAOKE_DATA.json", examples)
    config = load_config(write_config(tmp_path), ["DataLoader.dataset=saoke_json", f"DataLoader.data_path={tmp_path}",
                                                  "DataLoader.train_file=null", "DataLoader.test_file=null",
                                                  "DataLoader.valid_holdout=5", "DataLoader.test_holdout=4",
                                                  "DataLoader.train_subset=0"])
    splits = OIETask(config).splits()
    sizes = {name: len(split) for name, split in splits.items()}
    assert sizes == {"train": 21, "valid": 5, "test": 4}
    sentences = [{e.sentence for e in split} for split in splits.values()]
    assert set.union(*sentences) == {e.sentence for e in examples} and sum(map(len, sentences)) == 30
    assert splits["test"][0].facts[0].predicate == "乙"
    too_many = load_config(config["_source"], ["DataLoader.dataset=saoke_json", f"DataLoader.data_path={tmp_path}",
                                               "DataLoader.train_file=null", "DataLoader.test_file=null",
                                               "DataLoader.valid_holdout=20", "DataLoader.test_holdout=10"])
    with pytest.raises(ConfigError, match="30 examples cannot give valid_holdout=20 and test_holdout=10"):
        OIETask(too_many).splits()


def test_batches_are_a_pure_function_of_seed_epoch_and_position(tmp_path, shared_data):
    task = OIETask(load_config(write_config(tmp_path)))
    examples, lengths = task.train_examples()
    assert len(examples) == 60 and all(len(e.sentence) <= 30 for e in examples)
    epoch = task.epoch_batches(1)
    assert sorted(np.concatenate(epoch).tolist()) == list(range(len(examples)))
    assert all(len(b) <= 8 for b in epoch) and len(epoch) == task.steps_per_epoch()
    assert [b.tolist() for b in epoch] == [b.tolist() for b in task.epoch_batches(1)]
    assert [b.tolist() for b in epoch] != [b.tolist() for b in task.epoch_batches(2)]
    full, tail = list(task.train_batches(1)), list(task.train_batches(1, start=2))
    assert len(tail) == len(full) - 2
    np.testing.assert_array_equal(tail[0]["src_ids"].numpy(), full[2]["src_ids"].numpy())


def test_resume_is_exact(tmp_path, shared_data):
    straight_cfg = load_config(write_config(tmp_path), ["Global.run_name=straight"])
    straight = Trainer(straight_cfg, OIETask(straight_cfg), ARGS)
    straight.train()
    half_cfg = load_config(write_config(tmp_path), ["Global.run_name=halves", "Global.max_steps=2"])
    Trainer(half_cfg, OIETask(half_cfg), ARGS).train()
    rest_cfg = load_config(write_config(tmp_path), ["Global.run_name=halves"])
    resumed = Trainer(rest_cfg, OIETask(rest_cfg), ARGS)
    assert resumed.train()["step"] == 4
    a, b = params(straight.model), params(resumed.model)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
    fresh_cfg = load_config(write_config(tmp_path), ["Global.run_name=other", "Global.seed=7"])
    fresh = Trainer(fresh_cfg, OIETask(fresh_cfg), ARGS)
    fresh.train()
    assert any(not np.allclose(x, y) for x, y in zip(a.values(), params(fresh.model).values()))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run fitted to 16 short sentences, so decoding produces facts."""
    from paddle_suite.data import shared_data_dir

    if shared_data_dir() is None:
        pytest.skip("../shared/data is absent")
    tmp_path = tmp_path_factory.mktemp("oie_run")
    config = load_config(write_config(tmp_path, name="fitted", Global={"max_steps": 40, "eval_every": 40,
                                                                       "save_every": 40},
                                      DataLoader={"train_subset": 16}, Optimizer={"lr": 0.02}))
    task = OIETask(config)
    Trainer(config, task, ARGS).train()
    return config, task


def test_eval_uses_the_vocabulary_stored_with_the_checkpoint(trained_run):
    config, trained = trained_run
    run_dir = Path(config["Global"]["output_dir"]) / config["Global"]["run_name"]
    saved = read_vocab(str(run_dir / "best"))
    assert saved.itos == trained.vocab.itos
    # Build the task as if the training data had changed: the rebuilt vocabulary differs ...
    changed = OIETask(load_config(config["_source"], ["DataLoader.vocab_min_freq=3"]))
    assert len(changed.vocab) < len(saved)
    with pytest.raises(ValueError, match="does not match the model"):
        restore_model(changed, str(run_dir / "best"))
    # ... and eval still loads the run, with the stored vocabulary.
    result = changed.evaluate(ARGS)
    assert result["checkpoint"].endswith("best") and changed.vocab.itos == saved.itos
    test_sentences = changed.eval_examples("test")
    assert len(test_sentences) == 6 and 0.0 <= result["metrics"]["f1"] <= 1.0
    assert result["metrics"]["gold"] == sum(len(e.facts) for e in test_sentences)


def test_predict_prints_well_formed_facts(trained_run):
    config, task = trained_run
    run_dir = Path(config["Global"]["output_dir"]) / config["Global"]["run_name"]
    sentences = [e.sentence for e in task.train_examples()[0][:6]]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "oie_predict.py"), "--run", str(run_dir), "--json"],
                         input="\n".join(sentences) + "\n", capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["sentence"] for r in records] == sentences
    facts = [fact for r in records for fact in r["facts"]]
    assert facts, "the fitted model should extract facts from its own training sentences"
    for fact in facts:
        assert len(parse_facts(fact)) == 1
    text = subprocess.run([sys.executable, str(ROOT / "tools" / "oie_predict.py"), "--run", str(run_dir),
                           "--text", sentences[0]], capture_output=True, text=True, env=env, timeout=120)
    lines = text.stdout.splitlines()
    assert text.returncode == 0 and lines[0] == sentences[0]
    assert [parse_facts(line.strip())[0] for line in lines[1:] if line] == parse_facts(" ".join(records[0]["facts"]))
    missing = subprocess.run([sys.executable, str(ROOT / "tools" / "oie_predict.py"), "--run", str(run_dir / "nope"),
                              "--text", "x"], capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.slow
def test_training_through_tools_train_lowers_the_validation_loss(tmp_path, shared_data):
    config = write_config(tmp_path, name="short", Global={"max_steps": 60, "eval_every": 20, "save_every": 60,
                                                          "test_split": "test"},
                          DataLoader={"train_subset": 300, "valid_subset": 24}, Optimizer={"lr": 0.01})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "-c", str(config), "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["step"] == 60 and "f1" in result["test"]
    run_dir = tmp_path / "out" / "short"
    losses = [record["loss"] for record in read_metrics(str(run_dir), "valid")]
    # the same valid sentences scored by the initial model (the trainer seeds paddle with Global.seed first)
    import paddle

    task = OIETask(load_config(config))
    paddle.seed(task.config["Global"]["seed"])
    initial = task.build_model()
    initial.eval()
    with paddle.no_grad():
        losses.insert(0, task.teacher_forced_terms(initial, task.eval_examples("valid"))["loss"])
    # lower than the initial model at every validation, and still improving after the first one (60 steps at
    # lr 0.01 on 300 sentences may overfit by the last validation, so not strictly monotone)
    assert len(losses) == 4 and max(losses[1:]) < losses[0] and min(losses[2:]) < losses[1], losses
    assert losses[3] < 0.75 * losses[0], losses
    assert (run_dir / "best" / "model.pdparams").is_file() and (run_dir / "best" / "vocab.json").is_file()


def test_logician_loss_weights_the_named_terms():
    from paddle_suite.registry import LOSSES

    loss = LOSSES.get("logician")({"name": "logician", "nll_weight": 1.0, "coverage_weight": 0.5})
    assert loss({"nll": 2.0, "coverage": 3.0}) == 3.5
    assert LOSSES.get("logician")({"nll_weight": 2.0, "coverage_weight": 0.0})({"nll": 2.0, "coverage": 3.0}) == 4.0
    with pytest.raises(ConfigError, match="Loss.nll_weight must be > 0"):
        LOSSES.get("logician")({"nll_weight": 0.0, "coverage_weight": 1.0})


def test_a_malformed_data_line_stops_the_cli_with_its_position(tmp_path, capsys):
    from paddle_suite.cli import train

    folder = tmp_path / "tsv"
    folder.mkdir()
    good = "John lives in Paris .\tlives\tlives in\tJohn\tParis\n"
    (folder / "train.oie").write_text(good + "A broken line\tonly\n")
    (folder / "dev.oie").write_text(good)
    (folder / "test.oie").write_text(good)
    config = write_config(tmp_path, base="logician_oie2016.yaml",
                          DataLoader={"dataset": "oie_tsv", "data_path": str(folder), "train_subset": 0})
    with pytest.raises(SystemExit) as stop:
        train(["-c", str(config), "--no-progress"])
    assert stop.value.code == 2
    assert f"{folder / 'train.oie'}:2: 2 tab-separated fields" in capsys.readouterr().err


def run_tool(tool, *args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=env, timeout=300)


def test_eval_cli_and_predict_then_score_agree_on_the_test_sentences(trained_run, tmp_path):
    """The documented commands as subprocesses: tools/eval.py decodes the test subset; tools/oie_predict.py
    on the same sentences, scored by tools/oie_score.py against their gold lines, gives the same scores."""
    config, task = trained_run
    evaluated = run_tool("eval.py", "-c", config["_source"], "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads(evaluated.stdout)["metrics"]
    test = task.eval_examples("test")
    assert metrics["gold"] == sum(len(e.facts) for e in test) and 0.0 <= metrics["f1"] <= 1.0
    gold = tmp_path / "gold.txt"  # every line of test_4440.txt that holds a fact of the test sentences
    sentences = {e.sentence for e in test}
    test_file = Path(test[0].source.rsplit(":", 1)[0])
    gold.write_text("".join(line + "\n" for line in test_file.read_text(encoding="utf-8").splitlines()
                            if json.loads(line)["sentence"] in sentences), encoding="utf-8")
    run_dir = Path(config["Global"]["output_dir"]) / config["Global"]["run_name"]
    predicted = run_tool("oie_predict.py", "--run", run_dir, "--json", stdin="".join(e.sentence + "\n" for e in test))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    (tmp_path / "pred.jsonl").write_text(predicted.stdout, encoding="utf-8")
    scored = run_tool("oie_score.py", "--gold", gold, "--gold-layout", "spansaoke", "--predictions",
                      tmp_path / "pred.jsonl", "--json")
    assert scored.returncode == 0, scored.stderr
    scores = json.loads(scored.stdout)
    for key in ("precision", "recall", "f1", "exact_f1", "exact_match", "predicted", "gold", "matched"):
        assert scores[key] == pytest.approx(metrics[key]), key


def test_oie_tsv_reads_carb_layout_files(tmp_path, shared_data):
    corpus = shared_data / "oie" / "oie2016" / "oie_corpus"
    folder = tmp_path / "carb"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        lines = (corpus / f"{split}.oie").read_text(encoding="utf-8").splitlines()
        (folder / f"{split}.oie").write_text("".join("\t".join(l.split("\t")[:1] + l.split("\t")[2:]) + "\n"
                                                     for l in lines), encoding="utf-8")
    overrides = ["DataLoader.dataset=oie_tsv", f"DataLoader.data_path={folder}"]
    as_carb = OIETask(load_config(write_config(tmp_path, base="logician_oie2016.yaml"),
                                  overrides + ["DataLoader.tsv_layout=carb"])).splits()
    as_oie2016 = OIETask(load_config(write_config(tmp_path, base="logician_oie2016.yaml"))).splits()
    for split in ("train", "valid", "test"):
        assert [e.facts for e in as_carb[split]] == [e.facts for e in as_oie2016[split]], split
    from paddle_suite.oie.readers import OieDataError

    with pytest.raises(OieDataError, match="layout 'carb'"):  # the same files read with the head column
        OIETask(load_config(write_config(tmp_path, base="logician_oie2016.yaml"), overrides)).splits()
    with pytest.raises(ConfigError, match="DataLoader.tsv_layout"):
        load_config(write_config(tmp_path, base="logician_oie2016.yaml"), ["DataLoader.tsv_layout=clausie"])


def test_dependency_heads_from_saoke_json_reach_the_model_graph(tmp_path):
    """With arcs in the data (graph: auto) the batch's distances follow them; without, the word order."""
    from paddle_suite.oie.model import sentence_distances
    from paddle_suite.oie.readers import Example, write_saoke_jsonl

    heads = [-1, 0, 0, 0]  # a star: every character hangs on the first
    examples = [Example("甲乙丙丁", parse_facts("(甲, 乙, 丙)"), heads=heads)] * 12
    write_saoke_jsonl(tmp_path / "SAOKE_DATA.json", examples)
    overrides = ["DataLoader.dataset=saoke_json", f"DataLoader.data_path={tmp_path}", "DataLoader.train_file=null",
                 "DataLoader.test_file=null", "DataLoader.valid_holdout=2", "DataLoader.test_holdout=2",
                 "DataLoader.train_subset=0"]
    for graph, expected in (("auto", sentence_distances(4, heads)), ("adjacency", sentence_distances(4))):
        task = OIETask(load_config(write_config(tmp_path), overrides + [f"Arch.graph={graph}"]))
        assert task.splits()["train"][0].heads == heads
        batch = next(task.train_batches(0))
        np.testing.assert_array_equal(batch["distance"].numpy()[0], expected)


def test_kge_predict_tool_points_an_oie_run_to_oie_predict(trained_run):
    config, _ = trained_run
    run_dir = Path(config["Global"]["output_dir"]) / config["Global"]["run_name"]
    for where in (["--checkpoint", run_dir / "best"], ["-c", config["_source"]]):
        out = run_tool("predict.py", *where, "--relation", "r", "--head", "h")
        assert out.returncode == 2, out.stderr
        assert "is an open-IE (oie) run: use python tools/oie_predict.py" in out.stderr
