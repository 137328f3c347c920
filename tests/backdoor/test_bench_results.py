"""bench/backdoor_results.py: victims of several training seeds per arm, accumulated across invocations.

No training here: ``run_training`` is replaced by a stand-in that writes a fake report (numbers that
depend on the arm and the seed) and the run's ``config.yaml``, as ``tools/train.py`` would."""
import importlib.util
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ("ca", "asr", "target_prob", "strip_auroc", "nc_anomaly")
NC_OFFSETS = (-0.2, 0.0, 0.3)  # three NC runs around a victim's mean


def load_bench():
    spec = importlib.util.spec_from_file_location("backdoor_results", ROOT / "bench" / "backdoor_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_report(attack, lsba, seed, n_triggers=1):
    """A report whose numbers differ by attack, arm and seed (so means and pairings can be checked)."""
    shift = seed / 1000 + (0.01 if lsba else 0.0) + (0.002 if attack == "blend" else 0.0)
    index = [(2.5 if lsba else 2.0) + seed / 100 + d for d in NC_OFFSETS]
    masks = [[10.0 + seed + run] + [50.0 + c for c in range(9)] for run in range(len(NC_OFFSETS))]
    report = {"attack": attack, "ca": 0.9 + shift, "asr": 0.95 + shift, "target_prob": (0.6 if lsba else 0.99) - shift,
              "target_margin": 0.4, "strip_auroc": (0.1 if lsba else 0.9) + shift, "nc_anomaly": float(np.mean(index)),
              "nc_anomaly_std": float(np.std(index, ddof=1)), "nc_anomaly_seeds": index,
              "nc_flagged_share": float(np.mean(np.array(index) > 2)),
              "nc_target_l1": float(np.mean([m[0] for m in masks])),
              "nc_median_l1": 54.0, "spectral_auroc": 0.5, "train_hours": 0.05, "train_cpu_hours": 0.06,
              "p_n": 0.6 if lsba else None, "margin": 0.4 if lsba else None,
              "designed_target_prob": {"1": 0.6} if lsba else None,
              "target_prob_quantiles": {"0.05": 0.5 + shift, "0.5": 0.6 + shift},
              "neural_cleanse": [{"seed": s, "mask_l1": m} for s, m in zip((1, 2, 3), masks)]}
    if n_triggers == 2:
        report.update(designed_target_prob={"1": 0.46, "2": 0.6}, target_prob_k1=0.46, asr_k1=0.99)
    return report


class FakeTraining:
    """Stands in for ``tools/train.py``: records the runs it was asked for and writes their outputs."""

    def __init__(self):
        self.runs = []

    def __call__(self, command):
        items = dict(command[i + 1].split("=", 1) for i, word in enumerate(command) if word == "-o")
        config = Path(command[command.index("-c") + 1]).name
        attack = config.split("_")[1]
        seed = int(items.get("Global.seed", 42))
        run_dir = Path(items["Global.output_dir"]) / items["Global.run_name"]
        self.runs.append((items["Global.run_name"], items.get("Global.seed")))
        (run_dir / "report").mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"Global": {"seed": seed}}))
        report = fake_report(attack, items.get("Backdoor.lsba.enabled") == "true", seed,
                             int(items.get("Backdoor.lsba.n_triggers", 1)))
        (run_dir / "report" / "backdoor_report.json").write_text(json.dumps(report))


@pytest.fixture
def bench(monkeypatch):
    module = load_bench()
    monkeypatch.setattr(module, "run_training", FakeTraining())
    return module


def paths(tmp_path):
    return ["--output-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results" / "r.json"),
            "--markdown", str(tmp_path / "r.md")]


def read(tmp_path):
    return json.loads((tmp_path / "results" / "r.json").read_text())


def test_the_default_seed_is_the_configs_and_keeps_the_old_folder_names(bench):
    from paddle_suite.config import load_config
    seed = load_config(str(ROOT / "configs" / "lsba_blend_fmnist.yaml"))["Global"]["seed"]
    assert bench.config_seed("lsba_blend_fmnist.yaml") == seed
    assert bench.run_name("blend", "fashion_mnist", "plain", seed) == "blend_fmnist_plain"
    assert bench.run_name("blend", "fashion_mnist", "lsba", seed + 1) == f"blend_fmnist_lsba_seed{seed + 1}"
    assert bench.seed_overrides("lsba_blend_fmnist.yaml", seed) == []
    assert bench.seed_overrides("lsba_blend_fmnist.yaml", 1) == ["Global.seed=1"]


def test_seeds_accumulate_across_invocations_and_rows_are_their_means(bench, tmp_path):
    bench.main(["--datasets", "fashion_mnist", *paths(tmp_path)])
    first = read(tmp_path)
    bench.main(["--datasets", "fashion_mnist", "--attacks", "blend", "--seeds", "1", "2", *paths(tmp_path)])
    second = read(tmp_path)
    assert second["fashion_mnist"]["badnets"] == first["fashion_mnist"]["badnets"]  # not run: kept as it was
    row = second["fashion_mnist"]["blend"]["lsba"]
    assert row["victim_seeds"] == [1, 2, 42]
    reports = [fake_report("blend", True, s) for s in (1, 2, 42)]
    for key in ("ca", "asr", "strip_auroc", "nc_anomaly"):
        assert row[f"{key}_victims"] == pytest.approx([r[key] for r in reports])
        assert row[key] == pytest.approx(np.mean([r[key] for r in reports]))
        assert row[f"{key}_victims_std"] == pytest.approx(np.std([r[key] for r in reports], ddof=1))
    # detector noise stays over NC runs: every fake victim has the same spread over its 3 runs
    assert row["nc_anomaly_std"] == pytest.approx(np.std(NC_OFFSETS, ddof=1))
    assert row["nc_anomaly_seeds"] == pytest.approx([x for r in reports for x in r["nc_anomaly_seeds"]])
    assert row["target_prob_quantiles"]["0.5"] == pytest.approx(np.mean([r["target_prob_quantiles"]["0.5"]
                                                                         for r in reports]))
    assert row["nc_mask_l1"][0] == pytest.approx(np.mean([r["nc_target_l1"] for r in reports]))
    # each victim keeps the invocation that trained it
    assert row["victims"]["42"]["command"] == first["provenance"]["fashion_mnist"]["command"]
    assert row["victims"]["1"]["command"].endswith("--seeds 1 2 " + " ".join(map(shlex.quote, paths(tmp_path))))
    # read again by a later invocation (nothing trained): the recorded command stays
    bench.main(["--datasets", "fashion_mnist", "--attacks", "blend", "--seeds", "42", "1", *paths(tmp_path)])
    assert read(tmp_path)["fashion_mnist"]["blend"]["lsba"]["victims"] == row["victims"]
    assert (tmp_path / "runs" / "blend_fmnist_lsba_seed2" / "report").is_dir()
    assert not (tmp_path / "runs" / "badnets_fmnist_lsba_n2_seed1").exists()  # stacked: configs' seed only
    text = (tmp_path / "r.md").read_text()
    assert "| fashion_mnist | blend | plain | 3 (1, 2, 42) |" in text
    assert "| fashion_mnist | badnets | plain | 1 (42) |" in text
    assert f"| fashion_mnist | blend | lsba | 2 | {reports[1]['ca']:.3f} |" in text
    diffs = [fake_report("blend", True, s)["nc_anomaly"] - fake_report("blend", False, s)["nc_anomaly"]
             for s in (1, 2, 42)]
    assert f"| fashion_mnist | blend | 1, 2, 42 | {', '.join(f'{d:+.2f}' for d in diffs)} |" in text


def test_a_victim_whose_report_exists_is_read_not_trained(bench, tmp_path):
    default = tmp_path / "runs" / "blend_fmnist_plain"
    bench.run_training(["train.py", "-c", "configs/lsba_blend_fmnist.yaml", "-o",
                        f"Global.output_dir={tmp_path / 'runs'}", "-o", "Global.run_name=blend_fmnist_plain"])
    report = json.loads((default / "report" / "backdoor_report.json").read_text())
    report["ca"] = 0.5  # a value only this existing run has
    (default / "report" / "backdoor_report.json").write_text(json.dumps(report))
    bench.run_training.runs.clear()
    bench.main(["--datasets", "fashion_mnist", "--attacks", "blend", "--seeds", "42", "1", *paths(tmp_path)])
    assert sorted(bench.run_training.runs) == [("blend_fmnist_lsba", None), ("blend_fmnist_lsba_seed1", "1"),
                                               ("blend_fmnist_plain_seed1", "1")]
    row = read(tmp_path)["fashion_mnist"]["blend"]["plain"]
    assert row["ca_victims"] == [pytest.approx(fake_report("blend", False, 1)["ca"]), 0.5]


def test_a_folder_trained_with_another_seed_is_refused(bench, tmp_path):
    bench.main(["--datasets", "fashion_mnist", "--attacks", "blend", *paths(tmp_path)])
    config = tmp_path / "runs" / "blend_fmnist_plain" / "config.yaml"
    config.write_text(yaml.safe_dump({"Global": {"seed": 7}}))
    with pytest.raises(SystemExit, match=r"blend_fmnist_plain/config.yaml: Global.seed is 7"):
        bench.main(["--datasets", "fashion_mnist", "--attacks", "blend", *paths(tmp_path)])


def test_contract_shape_and_one_victims_fields_keep_their_meaning(bench, tmp_path):
    bench.main(["--datasets", "fashion_mnist", *paths(tmp_path)])
    results = read(tmp_path)
    assert {"machine", "date", "command", "provenance"} <= set(results)
    for attack in bench.ATTACKS:
        assert set(results["fashion_mnist"][attack]) == {"plain", "lsba"}
        for arm, row in results["fashion_mnist"][attack].items():
            report = fake_report(attack, arm == "lsba", 42)
            for key in CONTRACT:
                assert isinstance(row[key], float)
                assert row[key] == pytest.approx(report[key])
            for key in ("nc_anomaly_std", "nc_anomaly_seeds", "nc_flagged_share", "nc_target_l1"):
                assert row[key] == pytest.approx(report[key])
            assert row["ca_victims_std"] is None
    plain = fake_report("blend", False, 42)
    assert f"{plain['nc_anomaly']:.2f} +- {plain['nc_anomaly_std']:.2f} (3 NC runs)" in (tmp_path / "r.md").read_text()
    stacking = json.loads((tmp_path / "results" / "backdoor_stacking.json").read_text())
    assert stacking["fashion_mnist"]["target_prob_by_active"]["1"] == 0.46


def before_seeds(results, fields):
    """``results`` as the script wrote it before ``--seeds``: each arm one flat row, its configs'-seed victim."""
    legacy = json.loads(json.dumps(results))
    for dataset in ("cifar10", "fashion_mnist"):
        for pair in legacy.get(dataset, {}).values():
            for arm, row in pair.items():
                victim = row.get("victims", {}).get("42", row)
                pair[arm] = {key: value for key, value in victim.items() if key in fields}
    return legacy


def test_a_results_file_from_before_seeds_is_one_victim_of_the_configs_seed(bench, tmp_path):
    committed = json.loads((ROOT / "bench" / "results" / "backdoor_results.json").read_text())
    legacy = before_seeds(committed, bench.FIELDS)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text(json.dumps(legacy))
    bench.main(["--datasets", "fashion_mnist", "--attacks", "blend", "--seeds", "1", *paths(tmp_path)])
    results = read(tmp_path)
    for arm, old in legacy["fashion_mnist"]["badnets"].items():  # not run: same headline as before
        new = results["fashion_mnist"]["badnets"][arm]
        assert new["victim_seeds"] == [42]
        for key in (*CONTRACT, "nc_anomaly_std", "nc_anomaly_seeds", "nc_flagged_share", "spectral_auroc"):
            assert new[key] == old[key]
    blend = results["fashion_mnist"]["blend"]["plain"]
    old_blend = legacy["fashion_mnist"]["blend"]["plain"]
    assert blend["victim_seeds"] == [1, 42]
    seed1 = fake_report("blend", False, 1)
    assert blend["nc_anomaly"] == pytest.approx((old_blend["nc_anomaly"] + seed1["nc_anomaly"]) / 2)
    assert blend["victims"]["42"]["command"] == committed["provenance"]["fashion_mnist"]["command"]
