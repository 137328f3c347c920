"""SpaceE relation spectra by category, their tables and plot, embedding export, analysis CLI."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import paddle_suite  # noqa: F401
import paddle

from paddle_suite.kge import analysis
from paddle_suite.kge.models import SpaceE, TransE

REPO = Path(__file__).resolve().parents[2]


class MatrixModel:
    """Stands in for SpaceE: fixed relation matrices ``[R, maps, k, k]``."""

    def __init__(self, matrices):
        self.matrices = np.asarray(matrices, dtype=np.float64)

    def relation_matrices(self):
        return self.matrices


def random_rotation(k, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(k, k)))
    return q


def test_relation_spectra_normalised_and_sorted():
    u, v = random_rotation(3, 0), random_rotation(3, 1)
    mats = np.stack([
        [np.diag([1.0, 3.0, 2.0])],  # unsorted diagonal
        [u @ np.diag([4.0, 2.0, 0.0]) @ v],  # rank 2 after rotations -> smallest 0
        [np.zeros((3, 3))],  # zero map: all zeros, not NaN
    ])
    spectra = analysis.relation_spectra(MatrixModel(mats))
    assert spectra.shape == (3, 1, 3)
    np.testing.assert_allclose(spectra[0, 0], [1.0, 2 / 3, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(spectra[1, 0], [1.0, 0.5, 0.0], atol=1e-12)
    np.testing.assert_array_equal(spectra[2, 0], [0.0, 0.0, 0.0])


def test_relation_spectra_needs_relation_matrices():
    with pytest.raises(TypeError, match="SpaceE"):
        analysis.relation_spectra(TransE(5, 2, dim=4, gamma=1.0))


def test_spectrum_summary_groups_by_category(tmp_path):
    rng = np.random.default_rng(3)
    spectra = np.sort(rng.uniform(0, 1, (6, 2, 4)), axis=-1)[..., ::-1]
    spectra[..., 0] = 1.0
    categories = np.array(["N-1", "1-1", "N-1", "N-N", "N-1", "1-1"])
    names = [f"rel{i}" for i in range(6)]
    summary = analysis.spectrum_summary(spectra, categories, names)
    assert list(summary["by_category"]) == ["1-1", "N-1", "N-N"]  # conventional order, only present ones
    assert summary["by_category"]["N-1"]["relations"] == 3
    n1 = spectra[categories == "N-1"]
    assert summary["by_category"]["N-1"]["tail"]["median_min_normalised_singular_value"] == pytest.approx(
        np.median(n1[:, 1, -1])
    )
    np.testing.assert_allclose(summary["by_category"]["N-1"]["head"]["median_spectrum"], np.median(n1[:, 0], axis=0))
    assert len(summary["relations"]) == 12

    csv_path, json_path = analysis.write_spectrum_tables(summary, tmp_path)
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 12 and rows[1]["relation"] == "rel0" and rows[1]["map"] == "tail"
    assert float(rows[1]["min_normalised_singular_value"]) == pytest.approx(spectra[0, 1, -1], rel=1e-5)
    assert json.loads(json_path.read_text())["by_category"]["N-N"]["relations"] == 1

    png = analysis.plot_spectra(summary, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "relation_spectra.csv", "relation_spectra.json"]

    with pytest.raises(ValueError, match="6 spectra, 5 categories"):
        analysis.spectrum_summary(spectra, categories[:5], names)


def test_analyse_spectra_finds_planted_singular_map(tmp_path):
    """A SpaceE model whose N-1 relation map is rank 1 shows a near-zero smallest singular value there."""
    paddle.seed(0)
    model = SpaceE(num_entities=8, num_relations=2, k=3, m=2, gamma=1.0, head_only=True)
    singular = np.outer([1.0, 2.0, 0.5], [0.3, -1.0, 2.0])  # rank 1
    weights = np.stack([np.eye(3) + 0.1 * random_rotation(3, 5), singular]).reshape(2, -1).astype("float32")
    model.relation_embedding.weight.set_value(weights)
    train = np.array([
        (0, 0, 1), (1, 0, 2), (2, 0, 3),  # relation 0: 1-1
        (4, 1, 0), (5, 1, 0), (6, 1, 0), (7, 1, 0),  # relation 1: N-1
    ])
    summary, paths = analysis.analyse_spectra(model, train, ["bijection", "many_to_one"], tmp_path, title="planted")
    assert list(summary["by_category"]) == ["1-1", "N-1"]
    assert summary["by_category"]["N-1"]["head"]["median_min_normalised_singular_value"] < 1e-6
    assert summary["by_category"]["1-1"]["head"]["median_min_normalised_singular_value"] > 0.5
    assert all(Path(p).is_file() for p in paths.values())


def test_export_embeddings_round_trip(tmp_path):
    paddle.seed(1)
    model = SpaceE(num_entities=5, num_relations=3, k=2, m=3, gamma=1.0)
    entities, relations = [f"e{i}" for i in range(5)], ["r0", "r 1", "r2"]
    paths = analysis.export_embeddings(model, entities, relations, tmp_path / "emb")
    np.testing.assert_array_equal(np.load(paths["entity_embeddings"]), model.entity_embedding.weight.numpy())
    np.testing.assert_array_equal(np.load(paths["relation_embeddings"]), model.relation_embedding.weight.numpy())
    assert paths["relations"].read_text().splitlines() == relations
    meta = json.loads(paths["meta"].read_text())
    assert meta["model"] == "SpaceE" and meta["k"] == 2 and meta["m"] == 3 and meta["entity_embeddings"] == [5, 6]
    with pytest.raises(ValueError, match="vocabularies list 4 / 3"):
        analysis.export_embeddings(model, entities[:4], relations, tmp_path / "bad")


def test_vocabulary_and_run_errors(tmp_path):
    (tmp_path / "entities.txt").write_text("a\nb\na\n")
    with pytest.raises(analysis.RunError, match=r"entities.txt:3: name 'a' is listed twice"):
        analysis.read_vocabulary(tmp_path, "entities")
    with pytest.raises(analysis.RunError, match="relations.txt is missing"):
        analysis.read_vocabulary(tmp_path, "relations")
    with pytest.raises(analysis.RunError, match="does not exist"):
        analysis.find_run_config(tmp_path / "nope")
    with pytest.raises(analysis.RunError, match="no config.yaml"):
        analysis.find_run_config(tmp_path)


@pytest.mark.parametrize("config_name, expected", [
    ("logician_saoke.yaml", "{run} is an open-IE (oie) run: use python tools/oie_predict.py --run {run} "),
    ("ctr_dnn_ps.yaml", "{run} is a 'ctr' run, not a knowledge-graph (kge) one: use python tools/eval.py -c {run}/"),
])
def test_runs_of_other_tasks_are_refused_before_any_vocabulary_is_read(tmp_path, config_name, expected):
    from paddle_suite.config import load_config, save_config

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)  # no entities.txt: the task check must come first
    save_config(load_config(REPO / "configs" / config_name), run / "config.yaml")
    with pytest.raises(analysis.RunError) as refused:
        analysis.load_run(checkpoint=run / "best")
    assert expected.format(run=run) in str(refused.value)

# ---------------------------------------------------------------------------- CLI on a real checkpoint
@pytest.fixture(scope="module")
def umls_checkpoint(tiny_umls_checkpoint):
    return tiny_umls_checkpoint


def run_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "kge_analysis.py"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_spectra_and_export(umls_checkpoint, tmp_path):
    done = run_tool("spectra", "--checkpoint", umls_checkpoint, "--out", tmp_path / "spectra")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert set(report["by_category"]) <= {"1-1", "1-N", "N-1", "N-N"}
    assert sum(v["relations"] for v in report["by_category"].values()) == 46  # UMLS relations
    rows = list(csv.DictReader(open(report["files"]["csv"])))
    assert len(rows) == 2 * 46  # head and tail map of each relation
    assert all(0.0 <= float(r["min_normalised_singular_value"]) <= 1.0 for r in rows)
    assert Path(report["files"]["png"]).stat().st_size > 10_000

    done = run_tool("export", "--checkpoint", umls_checkpoint, "--out", tmp_path / "emb")
    assert done.returncode == 0, done.stderr[-3000:]
    entities = (tmp_path / "emb" / "entities.txt").read_text().splitlines()
    assert entities == (umls_checkpoint / "entities.txt").read_text().splitlines()
    assert np.load(tmp_path / "emb" / "entity_embeddings.npy").shape[0] == len(entities) == 135

    done = run_tool("export", "--checkpoint", tmp_path / "missing", "--out", tmp_path / "x")
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not os.path.exists(tmp_path / "x")
