"""Analysis of trained KGE checkpoints: SpaceE relation spectra by category, embedding export.

SpaceE's claim is that a non-injective relation (N-1 from the head side, 1-N from the tail side)
is learned as a singular map. ``relation_spectra`` takes the singular values of every learned
relation matrix (``R_r^head`` and, unless ``head_only``, ``R_r^tail``), sorted in decreasing order
and normalised by the largest (a zero matrix gives all zeros), so that spectra of relations with
different scales are comparable: a normalised smallest singular value near 0 means the map is
(nearly) singular. ``spectrum_summary`` groups them by relation category
(``paddle_suite.kge.evaluation.relation_categories`` on the training triples), ``plot_spectra``
draws them (box + strip plot of the normalised smallest singular value per category and map, and
the per-category median spectra), ``write_spectrum_tables`` writes the numbers as CSV and JSON.

``export_embeddings`` writes the entity and relation tables as ``.npy`` with their vocabularies.
``load_run`` rebuilds a task and its model from a config and a checkpoint directory (used by
``tools/kge_analysis.py`` and ``tools/predict.py``); the run directory, its saved config and the
checkpoint choice come from the engine's ``Run`` (``engine/run.py``). A run of another task is refused
before anything else is read, with the tool that does read it (``reject_other_task``). All files are
written atomically.
"""
import csv
import io
import json
from pathlib import Path

import numpy as np

import paddle_suite  # noqa: F401  (MKL_DEBUG_CPU_TYPE before paddle)
from paddle_suite.engine.run import CONFIG_FILE, Run, RunError, find_run_dir
from paddle_suite.io import atomic_write
from paddle_suite.kge.evaluation import CATEGORIES, UNSEEN, relation_categories

MAP_NAMES = ("head", "tail")
# RunError (the engine's): also raised here for a checkpoint whose vocabulary is missing or broken


# ---------------------------------------------------------------------------- loading a run
def find_run_config(checkpoint):
    """``config.yaml`` of the run a checkpoint belongs to (``run/best``, ``run/checkpoints/step_N``)."""
    return Path(find_run_dir(checkpoint)) / CONFIG_FILE


def reject_other_task(config, config_path, run_dir):
    """Refuse a run of another task, naming its run directory and the tool that reads such runs.

    Checked before anything else is read: such a run has no entity or relation vocabulary, so the
    next error would otherwise be a missing ``entities.txt``, which does not say what to do.
    """
    task = config["Global"]["task"]
    if task == "kge":
        return
    if task == "oie":
        raise RunError(f"{run_dir} is an open-IE (oie) run: use python tools/oie_predict.py --run {run_dir} "
                       "(sentences on stdin or --text) to print its SAOKE facts")
    tool = "tools/hessian.py" if task == "hessian" else "tools/eval.py"
    raise RunError(f"{run_dir} is a {task!r} run, not a knowledge-graph (kge) one: use python {tool} -c {config_path}")


def read_vocabulary(checkpoint, kind):
    """Names in id order from ``<checkpoint>/<kind>.txt`` (``kind``: entities or relations)."""
    folder = Path(checkpoint)
    if folder.suffix == ".pdparams":
        folder = folder.parent
    path = folder / f"{kind}.txt"
    if not path.is_file():
        raise RunError(f"{path} is missing: the checkpoint must hold the vocabulary saved by training")
    names = path.read_text(encoding="utf-8").split("\n")
    if names and names[-1] == "":
        names.pop()
    names = [name.rstrip("\r") for name in names]
    seen = set()
    for line, name in enumerate(names, 1):
        if name in seen:
            raise RunError(f"{path}:{line}: name {name!r} is listed twice")
        seen.add(name)
    return names


def load_run(config_path=None, checkpoint=None, overrides=()):
    """Rebuild ``(config, task, model, checkpoint, entities, relations)`` from a run.

    ``config_path`` defaults to the run's saved ``config.yaml`` found from ``checkpoint``, which may
    also be the run directory itself (its best model, else its newest checkpoint). The
    checkpoint's vocabulary must match the dataset named by the config, since ids index both.
    """
    from paddle_suite.config import load_config
    from paddle_suite.engine import restore_model
    from paddle_suite.registry import TASKS

    config_of_run = config_path is None
    if config_of_run:
        if checkpoint is None:
            raise RunError("give a config (-c) or a checkpoint directory (--checkpoint)")
        config_path = find_run_config(checkpoint)
    config = load_config(config_path, list(overrides))
    reject_other_task(config, config_path, Path(config_path).parent if config_of_run else Run(config).dir)
    if checkpoint is not None and (Path(checkpoint) / CONFIG_FILE).is_file():  # a run directory
        checkpoint = Run(config, directory=checkpoint).resolve_checkpoint()
    else:
        checkpoint = Run(config).resolve_checkpoint(checkpoint)
    entities = read_vocabulary(checkpoint, "entities")
    relations = read_vocabulary(checkpoint, "relations")
    task = TASKS.get(config["Global"]["task"])(config)
    dataset = task.dataset
    if list(dataset.entities) != entities or list(dataset.relations) != relations:
        raise RunError(
            f"the vocabulary in {checkpoint} ({len(entities)} entities, {len(relations)} relations) differs from "
            f"dataset {dataset.name} ({dataset.num_entities}, {dataset.num_relations}): "
            "use the config the checkpoint was trained with"
        )
    model = restore_model(task, checkpoint)
    return config, task, model, checkpoint, entities, relations


# ---------------------------------------------------------------------------- spectra
def relation_spectra(model):
    """Normalised singular values ``[num_relations, maps, k]`` (decreasing; divided by the largest)."""
    matrices = getattr(model, "relation_matrices", None)
    if matrices is None:
        raise TypeError(
            f"{type(model).__name__} has no relation matrices: the spectrum analysis needs a SpaceE checkpoint"
        )
    mats = np.asarray(matrices(), dtype=np.float64)
    if mats.ndim != 4 or mats.shape[-1] != mats.shape[-2]:
        raise ValueError(f"relation_matrices() must be [num_relations, maps, k, k], got {mats.shape}")
    singular = np.linalg.svd(mats, compute_uv=False)  # decreasing along the last axis
    largest = singular[..., :1]
    return np.divide(singular, largest, out=np.zeros_like(singular), where=largest > 0)


def spectrum_summary(spectra, categories, relation_names):
    """Per-relation rows and per-category statistics of normalised spectra (plain python, JSON-ready)."""
    spectra = np.asarray(spectra, dtype=np.float64)
    categories = np.asarray(categories).astype(str)
    if not (len(spectra) == len(categories) == len(relation_names)):
        raise ValueError(
            f"{len(spectra)} spectra, {len(categories)} categories and {len(relation_names)} relation names"
        )
    maps = MAP_NAMES[: spectra.shape[1]]
    relations = [
        {
            "relation": str(relation_names[r]),
            "category": str(categories[r]),
            "map": maps[m],
            "min_normalised_singular_value": float(spectra[r, m, -1]),
            "normalised_singular_values": [float(x) for x in spectra[r, m]],
        }
        for r in range(len(spectra))
        for m in range(len(maps))
    ]
    by_category = {}
    for category in [c for c in CATEGORIES + (UNSEEN,) if c in set(categories)]:
        mask = categories == category
        entry = {"relations": int(mask.sum())}
        for m, name in enumerate(maps):
            block = spectra[mask, m]
            entry[name] = {
                "median_min_normalised_singular_value": float(np.median(block[:, -1])),
                "mean_min_normalised_singular_value": float(np.mean(block[:, -1])),
                "median_spectrum": [float(x) for x in np.median(block, axis=0)],
            }
        by_category[category] = entry
    return {"maps": list(maps), "k": int(spectra.shape[-1]), "relations": relations, "by_category": by_category}


def write_spectrum_tables(summary, out_dir, stem="relation_spectra"):
    """Write ``<stem>.csv`` (one row per relation and map) and ``<stem>.json``; return their paths."""
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    k = summary["k"]
    writer.writerow(["relation", "category", "map", "min_normalised_singular_value",
                     *[f"sigma_{i + 1}" for i in range(k)]])
    for row in summary["relations"]:
        writer.writerow([row["relation"], row["category"], row["map"], f"{row['min_normalised_singular_value']:.6g}",
                         *[f"{x:.6g}" for x in row["normalised_singular_values"]]])
    with atomic_write(csv_path, "w", newline="") as handle:
        handle.write(buffer.getvalue())
    with atomic_write(json_path) as handle:
        json.dump(summary, handle, indent=2)
    return csv_path, json_path


def plot_spectra(summary, path, title=None):
    """PNG: normalised smallest singular value per category (box + points) and median spectra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(summary["by_category"])
    maps = summary["maps"]
    colors = {"head": "tab:blue", "tail": "tab:orange"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / len(maps)
    rng = np.random.default_rng(0)  # fixed jitter: the same checkpoint gives the same picture
    for m, name in enumerate(maps):
        values = [
            [row["min_normalised_singular_value"] for row in summary["relations"]
             if row["category"] == category and row["map"] == name]
            for category in categories
        ]
        positions = np.arange(len(categories)) + (m - (len(maps) - 1) / 2) * width
        left.boxplot(values, positions=positions, widths=width * 0.8, showfliers=False,
                     patch_artist=True, boxprops={"facecolor": colors[name], "alpha": 0.3})
        for position, vals in zip(positions, values):
            left.scatter(position + rng.uniform(-width * 0.25, width * 0.25, len(vals)), vals,
                         s=10, color=colors[name], alpha=0.8, label=None)
        left.scatter([], [], color=colors[name], label=f"R^{name}" if len(maps) > 1 else "R")
    left.set_xticks(np.arange(len(categories)))
    left.set_xticklabels([f"{c}\n(n={summary['by_category'][c]['relations']})" for c in categories])
    left.set_ylabel("smallest singular value / largest")
    left.set_ylim(bottom=0)
    left.set_title("Near 0 = (nearly) singular relation map")
    left.legend(loc="upper right")

    index = np.arange(1, summary["k"] + 1)
    styles = {"head": "-", "tail": "--"}
    for i, category in enumerate(categories):
        for name in maps:
            right.plot(index, summary["by_category"][category][name]["median_spectrum"], styles[name],
                       color=f"C{i}", marker="o", markersize=3,
                       label=f"{category}" + (f" R^{name}" if len(maps) > 1 else ""))
    right.set_xlabel("singular value index")
    right.set_ylabel("median normalised singular value")
    right.set_ylim(bottom=0)
    right.set_title("Median spectrum per relation category")
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def analyse_spectra(model, train_triples, relation_names, out_dir, title=None):
    """Spectra of a SpaceE model grouped by the categories of ``train_triples``: PNG + CSV + JSON."""
    spectra = relation_spectra(model)
    categories = relation_categories(train_triples, len(relation_names))
    summary = spectrum_summary(spectra, categories, relation_names)
    out_dir = Path(out_dir)
    csv_path, json_path = write_spectrum_tables(summary, out_dir)
    png_path = plot_spectra(summary, out_dir / "relation_spectra.png", title)
    return summary, {"png": png_path, "csv": csv_path, "json": json_path}


# ---------------------------------------------------------------------------- export
def export_embeddings(model, entities, relations, out_dir):
    """Write ``entity_embeddings.npy`` / ``relation_embeddings.npy`` with ``entities.txt`` / ``relations.txt``.

    Row ``i`` of each table belongs to line ``i`` of its vocabulary. ``embeddings.json`` records the
    model class, shapes and, for SpaceE, how to reshape rows (entity ``k x m``, relation
    ``maps x k x k``, row-major). Returns the paths written.
    """
    entity_table = model.entity_embedding.weight.numpy()
    relation_table = model.relation_embedding.weight.numpy()
    if len(entity_table) != len(entities) or len(relation_table) != len(relations):
        raise ValueError(
            f"model has {len(entity_table)} entities / {len(relation_table)} relations but the vocabularies "
            f"list {len(entities)} / {len(relations)}"
        )
    out_dir = Path(out_dir)
    meta = {
        "model": type(model).__name__,
        "entity_embeddings": list(entity_table.shape),
        "relation_embeddings": list(relation_table.shape),
    }
    for attribute in ("k", "m", "maps", "dim", "gamma", "head_only", "norm", "p_norm"):
        if hasattr(model, attribute):
            value = getattr(model, attribute)
            meta[attribute] = value if isinstance(value, (int, float, str, bool)) else str(value)
    paths = {
        "entity_embeddings": out_dir / "entity_embeddings.npy",
        "relation_embeddings": out_dir / "relation_embeddings.npy",
        "entities": out_dir / "entities.txt",
        "relations": out_dir / "relations.txt",
        "meta": out_dir / "embeddings.json",
    }
    for key, table in (("entity_embeddings", entity_table), ("relation_embeddings", relation_table)):
        with atomic_write(paths[key], "wb") as handle:
            np.save(handle, table)
    for key, names in (("entities", entities), ("relations", relations)):
        with atomic_write(paths[key], "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name}\n" for name in names))
    with atomic_write(paths["meta"]) as handle:
        json.dump(meta, handle, indent=2)
    return paths
