"""tools/predict.py on a tiny SpaceE checkpoint trained on UMLS by the engine."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle


REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def load_tool():
    spec = importlib.util.spec_from_file_location("predict_tool", REPO / "tools" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predict_tool = load_tool()


@pytest.fixture(scope="module")
def run(tiny_umls_checkpoint):
    checkpoint = tiny_umls_checkpoint
    from paddle_suite.kge.analysis import load_run

    config, task, model, _, entities, relations = load_run(checkpoint=checkpoint)
    return {"checkpoint": checkpoint, "task": task, "model": model, "entities": entities, "relations": relations}


def cli(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def known_query(task):
    """A training (head, relation) with several known tails."""
    train = task.dataset.train
    pairs, counts = np.unique(train[:, :2], axis=0, return_counts=True)
    h, r = pairs[np.argmax(counts)]
    tails = set(task.dataset.all_triples()[(task.dataset.all_triples()[:, 0] == h)
                                           & (task.dataset.all_triples()[:, 1] == r)][:, 2].tolist())
    return int(h), int(r), tails


def test_top_tails_match_model_scores(run):
    h, r, _ = known_query(run["task"])
    ents, rels = run["entities"], run["relations"]
    ranked = predict_tool.predict(run["model"], ents, rels, rels[r], head=ents[h], topk=7)
    with paddle.no_grad():
        scores = run["model"].score_tails(paddle.to_tensor([h]), paddle.to_tensor([r])).numpy()[0]
    expected = np.argsort(-scores, kind="stable")[:7]
    assert [name for _, name, _, _ in ranked] == [ents[i] for i in expected]
    assert [rank for rank, _, _, _ in ranked] == list(range(1, 8))
    np.testing.assert_allclose([s for _, _, s, _ in ranked], scores[expected], rtol=1e-6)


def test_filter_drops_exactly_the_known_answers(run):
    task, ents, rels = run["task"], run["entities"], run["relations"]
    h, r, tails = known_query(task)
    everything = predict_tool.predict(run["model"], ents, rels, rels[r], head=ents[h], topk=len(ents),
                                      known_triples=task.dataset.all_triples())
    assert {name for _, name, _, known in everything if known} == {ents[t] for t in tails}
    filtered = predict_tool.predict(run["model"], ents, rels, rels[r], head=ents[h], topk=len(ents),
                                    known_triples=task.dataset.all_triples(), drop_known=True)
    assert len(filtered) == len(ents) - len(tails)
    assert not any(known for *_, known in filtered)
    assert [n for _, n, _, k in everything if not k] == [n for _, n, _, _ in filtered]


def test_cli_heads_json_and_table(run):
    task, ents, rels = run["task"], run["entities"], run["relations"]
    h, r, t = task.dataset.train[0]
    done = cli("--checkpoint", run["checkpoint"], "--relation", rels[r], "--tail", ents[t], "--topk", 3, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    with paddle.no_grad():
        scores = run["model"].score_heads(paddle.to_tensor([r]), paddle.to_tensor([t])).numpy()[0]
    assert [a["name"] for a in answer["answers"]] == [ents[i] for i in np.argsort(-scores, kind="stable")[:3]]

    config = run["checkpoint"].parent.parent / "config.yaml"
    done = cli("-c", config, "-o", f"Global.checkpoint={run['checkpoint']}", "--head", ents[h],
               "--relation", rels[r], "--topk", 2, "--filter")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "known answers dropped" in lines[0] and len(lines) == 3 and lines[1].split()[0] == "1"


def test_unknown_names_suggest_close_ones(run):
    ents, rels = run["entities"], run["relations"]
    typo = ents[0][:-1] + "x" + ents[0][-1]
    done = cli("--checkpoint", run["checkpoint"], "--head", typo, "--relation", rels[0])
    assert done.returncode == 2
    assert f"unknown entity '{typo}'" in done.stderr and repr(ents[0]) in done.stderr
    done = cli("--checkpoint", run["checkpoint"], "--head", ents[0], "--relation", "zzzz_no_such_relation")
    assert done.returncode == 2 and "unknown relation 'zzzz_no_such_relation'" in done.stderr


def test_bad_arguments_and_mismatched_vocabulary(run, tmp_path):
    ents, rels = run["entities"], run["relations"]
    done = cli("--checkpoint", run["checkpoint"], "--head", ents[0], "--tail", ents[1], "--relation", rels[0])
    assert done.returncode != 0 and "exactly one of --head" in done.stderr
    # a checkpoint whose vocabulary was reordered no longer matches the dataset's ids
    copy = tmp_path / "tiny" / "checkpoints" / run["checkpoint"].name
    shutil.copytree(run["checkpoint"].parent.parent, tmp_path / "tiny")
    names = (copy / "entities.txt").read_text().splitlines()
    names[0], names[1] = names[1], names[0]
    (copy / "entities.txt").write_text("\n".join(names) + "\n")
    done = cli("--checkpoint", copy, "--head", ents[0], "--relation", rels[0])
    assert done.returncode == 2 and "differs from dataset umls" in done.stderr
