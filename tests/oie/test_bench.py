"""bench/oie_results.py writes the issue's results contract (training replaced by a stub here;
the real runs are the benchmark's, `python bench/oie_results.py --quick` exercises them end to end)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("oie_results", ROOT / "bench" / "oie_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_file_follows_the_contract_and_result_is_printed_last(tmp_path, monkeypatch, capsys):
    bench = load_bench()

    def stub(dataset, variant, args):  # distinct numbers per run, so a mixed-up row would show
        value = (list(bench.DATASETS).index(dataset) * 10 + bench.VARIANTS.index(variant) + 1) / 100
        result = {"precision": value, "recall": value / 2, "f1": value / 3, "exact_f1": 0.0, "exact_match": 0.0,
                  "predicted": 1, "gold": 1, "matched": 0, "valid_f1": 0.0, "steps": 5, "train_hours": 0.01,
                  "wall_hours_this_session": 0.01, "settings": []}
        if dataset == "oie2016":
            result.update({"lexical/precision": value, "lexical/recall": value, "lexical/f1": value})
        return result

    monkeypatch.setattr(bench, "train_one", stub)
    results_path, markdown_path = tmp_path / "oie_results.json", tmp_path / "oie_results.md"
    assert bench.main(["--jobs", "1", "--output", str(tmp_path / "runs"), "--results", str(results_path),
                       "--markdown", str(markdown_path)]) == 0
    results = json.loads(results_path.read_text())
    assert {"spansaoke", "oie2016", "machine", "date", "command"} <= set(results)
    for dataset in ("spansaoke", "oie2016"):
        assert set(results[dataset]) == {"logician", "seq2seq", "no_copy", "no_coverage", "no_gate"}
        for variant, row in results[dataset].items():
            assert row["precision"] == stub(dataset, variant, None)["precision"]
            assert {"precision", "recall", "f1"} <= set(row)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    assert json.loads(last[len("RESULT "):])["oie2016"]["no_gate"]["f1"] == results["oie2016"]["no_gate"]["f1"]
    table = markdown_path.read_text()
    assert "## spansaoke" in table and "## oie2016" in table and "`logician_oie2016_seq2seq.yaml`" in table
