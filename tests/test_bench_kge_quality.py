"""bench/kge_quality.py: its rule for reusing a finished pair or run directory, the command it records,
and the paired comparison it draws from the runs' saved ranks."""
import os
import sys
import types

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.kge_quality import (  # noqa: E402
    DEFAULT_PATHS,
    ROOT,
    canonical_command,
    default_settings,
    difference_table,
    markdown,
    paired_differences,
    same_settings,
)


def test_a_key_added_to_the_schema_since_does_not_invalidate_a_pair():
    defaults = {"Optimizer": {"lr": 0.001, "multi_tensor": False}, "Arch": {"entity_radius": None}}
    saved = {"Optimizer": {"lr": 0.003}, "Arch": {"k": 20}}
    assert same_settings(saved, {"Optimizer": {"lr": 0.003, "multi_tensor": False},
                                 "Arch": {"k": 20, "entity_radius": None}}, defaults)
    # the new key set to a non-default value, a changed value, a removed key: all invalidate
    assert not same_settings(saved, {"Optimizer": {"lr": 0.003}, "Arch": {"k": 20, "entity_radius": 4.0}}, defaults)
    assert not same_settings(saved, {"Optimizer": {"lr": 0.001}, "Arch": {"k": 20}}, defaults)
    assert not same_settings(saved, {"Optimizer": {"lr": 0.003}, "Arch": {}}, defaults)


def test_default_settings_fill_the_schema_and_the_factory_signature():
    defaults = default_settings("SpaceE")
    assert defaults["Optimizer"]["multi_tensor"] is False
    assert defaults["Arch"]["entity_radius"] is None and defaults["Arch"]["orthogonal_weight"] == 0.0


def bench_args():
    """The parsed arguments ``canonical_command`` reads, at the 24k table's settings."""
    return types.SimpleNamespace(budget="cpu", max_steps=24000, eval_every=2000, valid_subset=1000, override=[],
                                 results=DEFAULT_PATHS["--results"], markdown=DEFAULT_PATHS["--markdown"])


def test_the_recorded_command_names_a_results_file_other_than_the_default():
    args = bench_args()
    every_model = {"FB15k-237": {"SpaceE": {}, "RotatE": {}}, "WN18RR": {"TransE": {}}}
    assert "--results" not in canonical_command(args, every_model)
    assert "--markdown" not in canonical_command(args, every_model)
    args.results = os.path.join(ROOT, "bench", "results", "kge_quality_24000.json")
    args.markdown = os.path.join(ROOT, "bench", "kge_quality_24000.md")
    assert canonical_command(args, every_model).endswith(
        "--results bench/results/kge_quality_24000.json --markdown bench/kge_quality_24000.md")


def test_the_recorded_command_names_the_models_when_the_table_lacks_one():
    args = bench_args()
    every_pair = {"FB15k-237": {"TransE": {}, "SpaceE": {}, "RotatE": {}}, "WN18RR": {"SpaceE": {}}}
    assert "--models" not in canonical_command(args, every_pair)
    two_models = {"FB15k-237": {"RotatE": {}, "SpaceE": {}}, "WN18RR": {"SpaceE": {}}}
    assert canonical_command(args, two_models).endswith("--models SpaceE RotatE")


def test_the_recorded_command_names_the_datasets_when_the_table_lacks_one():
    args = bench_args()
    assert "--datasets" not in canonical_command(args, {"FB15k-237": {"SpaceE": {}}, "WN18RR": {"SpaceE": {}}})
    assert "--datasets WN18RR" in canonical_command(args, {"WN18RR": {"SpaceE": {}}})


def ranks_file(folder, name, ranks, triples, categories):
    path = folder / f"{name}.npz"
    np.savez(path, triples=triples, ranks=np.asarray(ranks, float), category=np.asarray(categories))
    return str(path)  # absolute: os.path.join(ROOT, path) keeps it


def test_paired_differences_compare_spacee_with_each_model_overall_and_by_category(tmp_path):
    triples = np.arange(12).reshape(4, 3)
    categories = ["1-N", "1-N", "N-1", "N-N"]
    results = {"WN18RR": {
        "SpaceE": {"ranks_file": ranks_file(tmp_path, "s", [[1, 1], [1, 1], [2, 2], [4, 4]], triples, categories)},
        "RotatE": {"ranks_file": ranks_file(tmp_path, "r", [[2, 2], [2, 2], [2, 2], [4, 4]], triples, categories)},
    }, "machine": "m"}
    got = paired_differences(results, {})["WN18RR"]["RotatE"]
    assert got["1-N"]["difference"] == pytest.approx(0.5) and got["1-N"]["ci"] == pytest.approx([0.5, 0.5])
    assert got["N-1"]["difference"] == 0 and "1-1" not in got
    assert got["overall"]["difference"] == pytest.approx(0.25) and got["overall"]["count"] == 4
    table = "\n".join(difference_table({"RotatE": got}))
    assert "| RotatE | +0.250 [" in table and "| +0.500 [+0.500, +0.500] |" in table

    # ranks files gone (a fresh clone): the recorded comparison stays while both pairs are in the table
    os.remove(results["WN18RR"]["RotatE"]["ranks_file"])
    previous = {"WN18RR": {"RotatE": got}}
    assert paired_differences(results, previous) == previous
    del results["WN18RR"]["RotatE"]
    assert paired_differences(results, previous) == {}


def test_paired_differences_refuse_ranks_of_different_triples(tmp_path):
    triples = np.arange(6).reshape(2, 3)
    results = {"FB15k-237": {
        "SpaceE": {"ranks_file": ranks_file(tmp_path, "s", [[1, 1], [1, 1]], triples, ["1-1", "1-1"])},
        "TransE": {"ranks_file": ranks_file(tmp_path, "t", [[1, 1], [1, 1]], triples[::-1], ["1-1", "1-1"])},
    }}
    with pytest.raises(ValueError, match="different test triples"):
        paired_differences(results, {})


def test_the_table_says_which_models_lack_a_paired_comparison():
    pair = {"steps": 6000, "train_seconds": 60.0, "mrr": 0.3, "hits@1": 0.2, "hits@10": 0.5, "by_category": {},
            "arch": {"name": "X"}, "lr": 0.001, "config": "configs/x.yaml"}
    results = {"WN18RR": {"SpaceE": pair, "RotatE": pair, "TransE": pair}, "machine": "m", "date": "d", "command": "c",
               "paired_differences": {"WN18RR": {"RotatE": {"overall": {"difference": 0.01, "ci": [0.0, 0.02]}}}}}
    text = markdown(results)
    assert "| RotatE | +0.010 [+0.000, +0.020] | - | - | - | - |" in text
    assert "No paired comparison of SpaceE with TransE: the test ranks of the SpaceE, TransE run(s)" in text


def test_the_settings_line_names_the_adversarial_temperature_when_recorded():
    pair = {"steps": 6000, "train_seconds": 60.0, "mrr": 0.3, "hits@1": 0.2, "hits@10": 0.5, "by_category": {},
            "arch": {"name": "X", "k": 20}, "lr": 0.003, "config": "configs/x.yaml", "overrides": ["Global.seed=7"]}
    recorded = dict(pair, settings={"Loss": {"adversarial_temperature": 1.0}, "DataLoader": {"self_negatives": True}})
    results = {"WN18RR": {"SpaceE": recorded, "RotatE": pair}, "machine": "m", "date": "d", "command": "c"}
    text = markdown(results)
    assert "- SpaceE (k=20; lr 0.003; adversarial temperature 1.0; self_negatives true): `configs/x.yaml` with" in text
    rotate_line = next(line for line in text.splitlines() if line.startswith("- RotatE ("))
    assert "temperature" not in rotate_line  # a pair recorded without its settings claims none


def test_a_run_directory_of_another_seed_is_set_aside_by_the_engines_check(tmp_path):
    from bench.kge_quality import set_aside_stale_run
    from paddle_suite.config import load_config
    from paddle_suite.engine import Run

    config_path = os.path.join(ROOT, "configs", "spacee_umls.yaml")
    first = load_config(config_path, [f"Global.output_dir={tmp_path}", "Global.run_name=pair"])
    Run(first).create()
    set_aside_stale_run(load_config(config_path, [f"Global.output_dir={tmp_path}", "Global.run_name=pair",
                                                  "Global.max_steps=99"]))  # same run, longer: kept to resume
    assert (tmp_path / "pair").is_dir()
    set_aside_stale_run(load_config(config_path, [f"Global.output_dir={tmp_path}", "Global.run_name=pair",
                                                  "Global.seed=7"]))
    assert not (tmp_path / "pair").exists() and len(list(tmp_path.glob("pair.replaced-*"))) == 1
