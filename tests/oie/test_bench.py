"""bench/oie_results.py writes the issue's results contract (training replaced by a stub here;
the real runs are the benchmark's, `python bench/oie_results.py --quick` exercises them end to end)."""
import importlib.util
import json

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("oie_results", ROOT / "bench" / "oie_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args_of(bench, quick=False):
    return type("Args", (), {"quick": quick})()


def stub_run(bench, scale=1.0):
    """A train_one stand-in: distinct numbers per (data set, variant), times ``scale`` per seed."""
    def stub(dataset, variant, seed, args):
        value = scale * (seed % 10 + 1) * (list(bench.DATASETS).index(dataset) * 10 + bench.VARIANTS.index(variant) + 1) / 1000
        result = {"precision": value, "recall": value, "f1": value, "exact_f1": 0.0, "exact_match": 0.0,
                  "predicted": 1, "gold": 1, "matched": 0, "valid_f1": 0.0, "steps": 5, "train_hours": 0.01,
                  "settings": bench.settings_of(dataset, variant, seed, args)}
        if dataset == "oie2016":
            result.update({"lexical/precision": value, "lexical/recall": value, "lexical/f1": value})
        return result
    return stub


def test_more_seeds_for_some_rows_keep_the_others_and_average(tmp_path, monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(bench, "train_one", stub_run(bench))
    paths = ["--output", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    assert bench.main(["--jobs", "1", *paths]) == 0
    first = json.loads((tmp_path / "r.json").read_text())
    assert bench.main(["--jobs", "1", "--datasets", "spansaoke", "--variants", "no_gate", "--seeds", "7", *paths]) == 0
    second = json.loads((tmp_path / "r.json").read_text())
    row = second["spansaoke"]["no_gate"]
    assert sorted(row["seeds"]) == ["42", "7"]
    assert row["f1"] == pytest.approx((row["seeds"]["42"]["f1"] + row["seeds"]["7"]["f1"]) / 2)
    assert row["f1"] != pytest.approx(first["spansaoke"]["no_gate"]["f1"])
    assert row["seeds"]["7"]["command"].endswith("--seeds 7 " + " ".join(paths))
    assert row["seeds"]["42"]["command"] == first["command"]  # each seed keeps its own provenance
    assert second["oie2016"] == first["oie2016"]
    assert "7, 42" in (tmp_path / "r.md").read_text()


def test_runs_with_another_budget_are_dropped_as_stale(tmp_path, monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(bench, "train_one", stub_run(bench))
    paths = ["--output", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    assert bench.main(["--jobs", "1", *paths]) == 0
    monkeypatch.setitem(bench.BUDGET, "spansaoke", {"max_steps": 99, "eval_every": 33})
    with pytest.raises(SystemExit, match="no up-to-date run for spansaoke/logician"):
        bench.main(["--jobs", "1", "--datasets", "oie2016", *paths])
    monkeypatch.setattr(bench, "train_one", stub_run(bench, scale=2.0))
    assert bench.main(["--jobs", "1", "--datasets", "spansaoke", *paths]) == 0
    row = json.loads((tmp_path / "r.json").read_text())["spansaoke"]["logician"]
    assert list(row["seeds"]) == ["42"] and row["f1"] == pytest.approx(2 * 3 / 1000)


def test_a_results_file_from_before_seeds_counts_as_the_configs_seed(tmp_path, monkeypatch):
    bench = load_bench()
    monkeypatch.setattr(bench, "train_one", stub_run(bench))
    old = {d: {v: dict(stub_run(bench)(d, v, 42, args_of(bench)), f1=0.5) for v in bench.variants_of(d)} for d in bench.DATASETS}
    old.update(command="python bench/oie_results.py --jobs 2", date="2026-12-04")
    (tmp_path / "r.json").write_text(json.dumps(old))
    paths = ["--output", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    assert bench.main(["--jobs", "1", "--datasets", "spansaoke", *paths]) == 0
    kept = json.loads((tmp_path / "r.json").read_text())["oie2016"]["no_copy"]
    assert kept["f1"] == 0.5 and kept["seeds"]["42"]["command"] == "python bench/oie_results.py --jobs 2"


def test_results_file_follows_the_contract_and_result_is_printed_last(tmp_path, monkeypatch, capsys):
    bench = load_bench()

    def stub(dataset, variant, seed, args):  # distinct numbers per run, so a mixed-up row would show
        value = (list(bench.DATASETS).index(dataset) * 10 + bench.VARIANTS.index(variant) + 1) / 100
        result = {"precision": value, "recall": value / 2, "f1": value / 3, "exact_f1": 0.0, "exact_match": 0.0,
                  "predicted": 1, "gold": 1, "matched": 0, "valid_f1": 0.0, "steps": 5, "train_hours": 0.01,
                  "wall_hours_this_session": 0.01, "settings": bench.settings_of(dataset, variant, seed, args)}
        if dataset == "oie2016":
            result.update({"lexical/precision": value, "lexical/recall": value, "lexical/f1": value})
        return result

    monkeypatch.setattr(bench, "train_one", stub)
    results_path, markdown_path = tmp_path / "oie_results.json", tmp_path / "oie_results.md"
    assert bench.main(["--jobs", "1", "--output", str(tmp_path / "runs"), "--results", str(results_path),
                       "--markdown", str(markdown_path)]) == 0
    results = json.loads(results_path.read_text())
    assert {"spansaoke", "oie2016", "machine", "date", "command"} <= set(results)
    ablations = {"logician", "seq2seq", "no_copy", "no_coverage", "no_gate"}
    assert set(results["spansaoke"]) == ablations | {"learned_path"}
    assert set(results["oie2016"]) == ablations | {"link_grammar", "learned_path"}
    for dataset in ("spansaoke", "oie2016"):
        for variant, row in results[dataset].items():
            assert row["precision"] == pytest.approx(stub(dataset, variant, 42, args_of(bench))["precision"])
            assert {"precision", "recall", "f1"} <= set(row)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    assert json.loads(last[len("RESULT "):])["oie2016"]["no_gate"]["f1"] == results["oie2016"]["no_gate"]["f1"]
    table = markdown_path.read_text()
    assert "## spansaoke" in table and "## oie2016" in table and "`logician_oie2016_seq2seq.yaml`" in table


def test_a_run_trained_on_file_ordered_facts_is_not_resumed(tmp_path):
    """Its checkpoints learnt other targets: resuming (at max_steps: only re-testing) would report them."""
    bench = load_bench()
    args = type("Args", (), {"quick": False, "output": str(tmp_path)})()
    run = tmp_path / bench.run_name("spansaoke", "logician", 42)
    run.mkdir()
    old_settings = [s for s in bench.settings_of("spansaoke", "logician", 42, args) if s != bench.FACT_ORDER_SETTING]
    (run / "bench_result.json").write_text(json.dumps({"f1": 0.2, "settings": old_settings}))
    with pytest.raises(RuntimeError, match="fact order"):
        bench.train_one("spansaoke", "logician", 42, args)


def test_a_contribution_is_visible_only_when_every_ablation_seed_scores_below_every_logician_seed(tmp_path, monkeypatch):
    bench = load_bench()
    f1 = {("logician", 1): 0.30, ("logician", 2): 0.20, ("no_copy", 1): 0.0, ("no_copy", 2): 0.19,
          ("no_gate", 1): 0.25, ("no_gate", 2): 0.19, ("link_grammar", 1): 0.26, ("link_grammar", 2): 0.27}

    def stub(dataset, variant, seed, args):
        result = stub_run(bench)(dataset, variant, seed, args)
        result.update(f1=f1.get((variant, seed), 0.1), repeated=0.125 if variant == "no_coverage" else 0.0)
        if variant not in ("no_gate", "seq2seq"):
            result["gate"] = 0.5 + seed / 4
        return result

    monkeypatch.setattr(bench, "train_one", stub)
    assert bench.main(["--jobs", "1", "--seeds", "1", "2", "--output", str(tmp_path / "runs"),
                       "--results", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]) == 0
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in (tmp_path / "r.md").read_text().splitlines()
            if line.startswith("| `logician_saoke")}
    assert rows["logician_saoke_no_copy.yaml"][8] == "yes" and rows["logician_saoke_no_gate.yaml"][8] == "no"
    assert rows["logician_saoke_no_coverage.yaml"][11] == "0.125"
    assert rows["logician_saoke.yaml"][12] == "0.875" and rows["logician_saoke_no_gate.yaml"][12] == ""  # seeds 1, 2
    oie2016 = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in (tmp_path / "r.md").read_text().splitlines()
               if line.startswith("| `logician_oie2016")}
    assert oie2016["logician_oie2016_link_grammar.yaml"][8] == "yes, over no_gate"  # 0.26, 0.27 vs 0.25, 0.19


def test_a_metric_some_seeds_lack_shows_the_seeds_that_have_it():
    bench = load_bench()
    runs = {1: {"f1": 0.2, "steps": 5, "train_hours": 0.1, "repeated": 0.03},
            42: {"f1": 0.3, "steps": 5, "train_hours": 0.1, "repeated": 0.01, "gate": 0.9}}
    assert bench.seed_mean_cell(bench.row_of(runs), "repeated") == "0.020"
    del runs[1]["repeated"]
    row = bench.row_of(runs)
    assert "repeated" not in row  # no mean over a subset of the seeds
    assert bench.seed_mean_cell(row, "repeated") == "0.010 (seed 42 only)"
    del runs[42]["gate"]
    assert bench.seed_mean_cell(bench.row_of(runs), "gate") == ""
