"""tools/oie_score.py as a subprocess on the real OIE2016 files: scoring any gold file by path."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCORE = str(ROOT / "tools" / "oie_score.py")


def score(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, SCORE, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120)


def write_carb(source, target, keep=lambda index: True):
    """``source`` (OIE2016 layout) without its predicate-head column, keeping the lines ``keep`` accepts."""
    lines = source.read_text(encoding="utf-8").splitlines()
    target.write_text("".join("\t".join(line.split("\t")[:1] + line.split("\t")[2:]) + "\n"
                              for index, line in enumerate(lines) if keep(index)), encoding="utf-8")
    return target


def test_gold_scored_against_itself_in_the_other_layout_is_perfect(shared_data, tmp_path):
    gold = shared_data / "oie" / "oie2016" / "oie_corpus" / "test.oie"
    carb = write_carb(gold, tmp_path / "test_carb.tsv")
    out = score("--gold", gold, "--predictions", carb, "--predictions-layout", "carb", "--json")
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert scores["gold_sentences"] == 603 and scores["gold"] == 1730 and scores["predicted"] == 1730
    assert scores["f1"] == scores["exact_match"] == scores["lexical/f1"] == 1.0
    # The same files the other way round: a CaRB-layout gold file, scored by path.
    back = score("--gold", carb, "--gold-layout", "carb", "--predictions", gold, "--predictions-layout", "oie2016")
    assert back.returncode == 0 and "F1 1.0000" in back.stdout


def test_half_of_the_tuples_give_full_precision_and_partial_recall(shared_data, tmp_path):
    gold = shared_data / "oie" / "oie2016" / "oie_corpus" / "dev.oie"
    half = write_carb(gold, tmp_path / "half.tsv", keep=lambda index: index % 2 == 0)
    scores = json.loads(score("--gold", gold, "--predictions", half, "--predictions-layout", "carb", "--json").stdout)
    assert scores["predicted"] == 837 and scores["precision"] == 1.0
    assert scores["recall"] == pytest.approx(837 / 1673) and scores["lexical/recall"] == pytest.approx(837 / 1673)


def test_bad_prediction_lines_name_file_and_line(shared_data, tmp_path):
    gold = shared_data / "oie" / "oie2016" / "oie_corpus" / "test.oie"
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text(json.dumps({"sentence": "s", "facts": []}) + "\n"
                           + json.dumps({"sentence": "s", "facts": ["(a, b c)"]}) + "\n", encoding="utf-8")
    out = score("--gold", gold, "--predictions", predictions)
    assert out.returncode == 2 and f"error: {predictions}:2: facts[0]: position 7: expected" in out.stderr
    wrong_layout = score("--gold", write_carb(gold, tmp_path / "carb.tsv"), "--predictions", predictions)
    assert wrong_layout.returncode == 2 and "layout 'carb'" in wrong_layout.stderr
    missing = score("--gold", tmp_path / "nope.oie", "--predictions", predictions)
    assert missing.returncode == 2 and "nope.oie" in missing.stderr
