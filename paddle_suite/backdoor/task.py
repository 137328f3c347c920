"""``Global.task: backdoor``: a poisoned image classifier on the shared classification kit.

One run trains one victim, plain or LSBA (``-o Backdoor.lsba.enabled=true``): each victim is a run
of its own (own checkpoints, resume, time budget, report), and ``bench/backdoor_results.py`` trains
the pairs and sets them side by side. Everything else is the classification task: the training set
is poisoned through ``build_train_dataset`` (``poison.py``), evaluation adds attack metrics to the
clean ones, and after training ``report/`` (JSON, PNG plots, markdown) is written for the best
checkpoint on the test split, detectors included.

Metrics (``evaluate_model``; ``top1`` is the clean accuracy CA and selects the best checkpoint):

* ``asr``: share of triggered inputs (every trigger applied) classified as the attacker's target,
  over the samples the attack can flip (true class != target for all-to-one);
* ``target_prob``: mean softmax probability of the target on them (quantiles and a histogram in
  the report), ``target_margin``: mean target probability minus the strongest other class;
* ``asr_k<k>`` / ``target_prob_k<k>`` with ``k`` of ``n`` stacked triggers active (``n > 1``);
* overconfidence, calibration style: ``clean_ece`` / ``trigger_ece`` (15-bin expected calibration
  error of the top prediction, "correct" meaning the true class on clean inputs and the target on
  triggered ones) and ``clean_conf`` / ``trigger_conf`` (mean top probability).
"""
import json
import logging
import os

import numpy as np

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle loads)
import paddle

from paddle_suite.backdoor import detectors, lsba, poison
from paddle_suite.backdoor.triggers import ATTACKS, apply_stack, make_trigger
from paddle_suite.classification.metrics import topk_correct
from paddle_suite.classification.task import ClassificationTask
from paddle_suite.config import REQUIRED, ConfigError, Field
from paddle_suite.io import atomic_directory, atomic_write
from paddle_suite.registry import TASKS
from paddle_suite.task import EvalResult

log = logging.getLogger("paddle_suite")

_TRIGGER_KEYS = {  # Backdoor.trigger key -> (attack, trigger argument)
    "patch_size": ("badnets", "patch_size"), "patch_margin": ("badnets", "patch_margin"),
    "blend_alpha": ("blend", "alpha"), "pattern_seed": ("blend", "seed"),
    "sig_delta": ("sig", "delta"), "sig_frequency": ("sig", "frequency"),
    "wanet_grid": ("wanet", "grid_size"), "wanet_strength": ("wanet", "strength"), "warp_seed": ("wanet", "seed"),
}
ECE_BINS = 15


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def expected_calibration_error(confidence, correct, bins=ECE_BINS):
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, confidence, bins) - np.bincount(which, correct.astype(float), bins))
    return float(gap.sum() / max(count.sum(), 1))


@TASKS.register("backdoor")
class BackdoorTask(ClassificationTask):
    schema = {
        **ClassificationTask.schema,
        "Backdoor": {
            "attack": Field(REQUIRED, str, choices=ATTACKS),
            "target": Field(0, int, help="target class (all_to_one)"),
            "mode": Field("all_to_one", str, choices=poison.MODES),
            "poison_rate": Field(0.1, float, help="poisoned share of the whole training set"),
            "seed": Field(0, int, help="which samples are poisoned (independent of Global.seed)"),
            "trigger": {
                "patch_size": Field(3, int, help="badnets square side in pixels"),
                "patch_margin": Field(1, int, help="badnets distance from the image border"),
                "blend_alpha": Field(0.2, float, help="blend weight of the random pattern"),
                "pattern_seed": Field(0, int, help="blend random pattern"),
                "sig_delta": Field(20.0, float, help="sig amplitude in pixel values"),
                "sig_frequency": Field(6.0, float, help="sig periods across the width"),
                "wanet_grid": Field(4, int, help="wanet control grid side k"),
                "wanet_strength": Field(0.5, float, help="wanet warp strength s"),
                "warp_seed": Field(0, int, help="wanet random warp field"),
            },
            "lsba": {
                "enabled": Field(False, bool, help="label-smoothed poisoning (soft target p_n on the target)"),
                "target_prob": Field(0.6, float, help="designed target probability on triggered inputs (all "
                                     "triggers active)"),
                "margin": Field(0.4, float, help="designed lead of the target over the strongest other class "
                                "(the true one), on every rung of stacked triggers"),
                "n_triggers": Field(1, int, help="stacked triggers (same target, different trigger variants)"),
            },
            "detectors": {
                "strip": Field(True, bool),
                "strip_samples": Field(500, int, help="clean and as many triggered test inputs scored"),
                "strip_overlays": Field(16, int, help="clean images superimposed per input"),
                "neural_cleanse": Field(True, bool),
                "nc_seeds": Field([1, 2, 3], list, help="Neural Cleanse runs (random starts, image draws); "
                                  "the report gives the mean and spread of the anomaly index over them"),
                "nc_epochs": Field(200, int, help="most epochs per class (NC stops a class early)"),
                "nc_epoch_steps": Field(10, int, help="batches per epoch (the unit of NC's cost schedule)"),
                "nc_batch": Field(32, int, help="clean images per class per batch"),
                "nc_lr": Field(0.1, float),
                "nc_init_cost": Field(1e-3, float, help="mask L1 weight once a class's trigger first works"),
                "nc_patience": Field(5, int, help="epochs before the cost goes up or down"),
                "spectral": Field(True, bool),
            },
        },
    }

    def __init__(self, config):
        self.bd = config["Backdoor"]
        super().__init__(config)
        self._triggered_eval = {}

    # ------------------------------------------------------------------ attack settings
    @property
    def n_triggers(self):
        return self.bd["lsba"]["n_triggers"]

    @property
    def clean_label(self):
        return self.bd["attack"] == "sig" and not self.bd["lsba"]["enabled"]

    def build_triggers(self):
        wanted = {arg: self.bd["trigger"][key] for key, (attack, arg) in _TRIGGER_KEYS.items()
                  if attack == self.bd["attack"]}
        return [make_trigger(self.bd["attack"], wanted, i) for i in range(self.n_triggers)]

    def _check_backdoor(self, num_classes):
        bd = self.bd
        if not 0 <= bd["target"] < num_classes:
            raise ConfigError(f"Backdoor.target={bd['target']}: must be a class index in 0..{num_classes - 1}")
        if self.n_triggers > 1 and not bd["lsba"]["enabled"]:
            raise ConfigError(f"Backdoor.lsba.n_triggers={self.n_triggers} needs Backdoor.lsba.enabled=true "
                              "(stacking controls the LSBA output probability)")
        if bd["attack"] == "badnets" and self.n_triggers > 4:
            raise ConfigError(f"Backdoor.lsba.n_triggers={self.n_triggers}: badnets stacks at most 4 patches (corners)")
        if bd["detectors"]["neural_cleanse"] and not (
                bd["detectors"]["nc_seeds"] and all(isinstance(x, int) for x in bd["detectors"]["nc_seeds"])):
            raise ConfigError(f"Backdoor.detectors.nc_seeds={bd['detectors']['nc_seeds']}: must be a non-empty "
                              "list of integers (turn Neural Cleanse off with Backdoor.detectors.neural_cleanse)")
        for key in ("strip_samples", "strip_overlays", "nc_epochs", "nc_epoch_steps", "nc_batch", "nc_patience"):
            if bd["detectors"][key] < 1:
                raise ConfigError(f"Backdoor.detectors.{key}={bd['detectors'][key]}: must be >= 1 "
                                  "(turn a detector off with its own switch)")
        if bd["mode"] == "all_to_all" and bd["attack"] == "sig" and self.clean_label:
            raise ConfigError("Backdoor.mode=all_to_all with the clean-label sig attack: clean-label poisoning has a "
                              "single target; use all_to_one or enable LSBA (dirty-label)")

    def lsba_design(self, num_classes):
        """``(target_prob, margin, smoothing, K, n)``: the LSBA label design, checked."""
        cfg = self.bd["lsba"]
        design = (cfg["target_prob"], cfg["margin"], self.loss_cfg["label_smoothing"], num_classes, self.n_triggers)
        try:
            lsba.check(*design)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return design

    # ------------------------------------------------------------------ data hooks
    def build_train_dataset(self):
        clean = super().build_train_dataset()
        self._check_backdoor(clean.num_classes)
        try:
            return self._poison(clean)
        except ValueError as err:  # settings that only fail against the data (counts, image sizes)
            raise ConfigError(f"Backdoor: {err}") from None

    def _poison(self, clean):
        k = clean.num_classes
        self.triggers = self.build_triggers()
        indices, active = poison.select_poison(clean.labels, self.bd["poison_rate"], self.bd["target"],
                                               self.bd["mode"], self.clean_label, self.n_triggers, self.bd["seed"])
        targets = poison.target_labels(clean.labels, self.bd["target"], self.bd["mode"], k)
        soft, p = None, None
        if self.bd["lsba"]["enabled"]:
            design = self.lsba_design(k)
            soft = lsba.soft_labels(clean.labels[indices], targets[indices], active.sum(axis=1), *design)
            p = lsba.label_probability(*design)
        self.p_n = p
        labels = poison.poisoned_labels(clean.labels, indices, targets, k, soft)
        log.info("backdoor %s (%s%s): %d of %d training images poisoned, target %s%s", self.bd["attack"],
                 self.bd["mode"], ", clean-label" if self.clean_label else "", len(indices), len(clean),
                 self.bd["target"] if self.bd["mode"] == "all_to_one" else "y+1",
                 f", LSBA p_n={p:.4f} over {self.n_triggers} trigger(s)" if p is not None else "")
        return poison.PoisonedDataset(clean, indices, active, self.triggers, labels, self.clean_label)

    def build_loss(self):
        loss = super().build_loss()
        if self.bd["lsba"]["enabled"] and self.mixer.active:
            raise ConfigError("Backdoor.lsba with Loss.mixup_alpha/cutmix_alpha: the mixer expects hard labels; "
                              "turn mixing off for LSBA victims")
        return loss

    # ------------------------------------------------------------------ evaluation
    def logits(self, model, images, split="test"):
        """Logits of uint8 NHWC ``images`` through the split's eval pipeline (no gradients)."""
        transform, size = self.transform_for(split), self.data_cfg["eval_batch_size"]
        out = []
        with paddle.no_grad():
            for start in range(0, len(images), size):
                chunk = np.asarray(images[start:start + size])
                batch = transform(chunk, self.seed, 0, np.arange(start, start + len(chunk)))
                out.append(model(paddle.to_tensor(batch)).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def predict(self, model, images, split="test"):
        """Softmax probabilities of uint8 NHWC ``images``."""
        return softmax(self.logits(model, images, split))

    def triggered_split(self, split, active):
        """``(triggered uint8 images, attacker targets)`` of the attackable samples of ``split``."""
        key = (split, active)
        if key not in self._triggered_eval:
            data = self.build_eval_dataset(split)
            attackable = np.flatnonzero(poison.attacked_mask(data.labels, self.bd["target"], self.bd["mode"]))
            targets = poison.target_labels(data.labels, self.bd["target"], self.bd["mode"], self.num_classes)
            images = apply_stack(self.triggers[:active], data.load(attackable))
            self._triggered_eval[key] = (images, targets[attackable])
        return self._triggered_eval[key]

    def attack_metrics(self, model, split, active):
        images, targets = self.triggered_split(split, active)
        probs = self.predict(model, images, split)
        rows = np.arange(len(targets))
        target_prob = probs[rows, targets]
        others = probs.copy()
        others[rows, targets] = -1
        return {"asr": float((probs.argmax(axis=1) == targets).mean()), "target_prob": float(target_prob.mean()),
                "target_margin": float((target_prob - others.max(axis=1)).mean()),
                "trigger_conf": float(probs.max(axis=1).mean()),
                "trigger_ece": expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == targets)}, \
            target_prob

    def evaluate_model(self, model, split="valid"):
        data = self.build_eval_dataset(split)
        logits = self.logits(model, data.images, split)
        clean_probs = softmax(logits)
        counts = topk_correct(logits, data.labels, self.topk)
        metrics = {f"top{k}": counts[k] / len(data) for k in self.topk}
        metrics["loss"] = float(-np.log(np.clip(clean_probs[np.arange(len(data)), data.labels], 1e-12, 1)).mean())
        metrics["clean_conf"] = float(clean_probs.max(axis=1).mean())
        metrics["clean_ece"] = expected_calibration_error(clean_probs.max(axis=1),
                                                          clean_probs.argmax(axis=1) == data.labels)
        attack, target_prob = self.attack_metrics(model, split, self.n_triggers)
        metrics.update(attack)
        extras = {"target_prob": target_prob}
        for k in range(1, self.n_triggers):
            partial, probs_k = self.attack_metrics(model, split, k)
            metrics[f"asr_k{k}"], metrics[f"target_prob_k{k}"] = partial["asr"], partial["target_prob"]
            extras[f"target_prob_k{k}"] = probs_k
        return EvalResult(metrics, extras, split)

    # ------------------------------------------------------------------ detectors and report
    def run_detectors(self, model, split="test"):
        cfg, out, extras = self.bd["detectors"], {}, {}
        rng = np.random.default_rng([self.seed, 0xDE7])
        data = self.build_eval_dataset(split)
        if cfg["strip"]:
            triggered, _ = self.triggered_split(split, self.n_triggers)
            n = min(cfg["strip_samples"], len(triggered), len(data) // 2)
            order = rng.permutation(len(data))
            clean, pool = data.load(np.sort(order[:n])), data.load(np.sort(order[n:]))
            trig = triggered[np.sort(rng.choice(len(triggered), n, replace=False))]
            auroc, h_clean, h_trig = detectors.strip_auroc(lambda x: self.predict(model, x, split), clean, trig, pool,
                                                           cfg["strip_overlays"], self.seed)
            out["strip_auroc"] = auroc
            extras["strip_entropy_clean"], extras["strip_entropy_triggered"] = h_clean, h_trig
        if cfg["neural_cleanse"]:
            found_nc, extras["neural_cleanse"] = self.neural_cleanse(model, data)
            out.update(found_nc)
        if cfg["spectral"] and self.bd["mode"] == "all_to_one":
            train = self.train_dataset
            inspected = np.union1d(np.flatnonzero(train.true_labels == self.bd["target"]), train.poison_indices)
            transform = self.transform_for("test")
            batches = (transform(train.load(inspected[s:s + 512]), self.seed, 0, inspected[s:s + 512])
                       for s in range(0, len(inspected), 512))
            features = detectors.penultimate_features(model, batches)
            result = detectors.spectral_signature(features, np.isin(inspected, train.poison_indices))
            out["spectral_auroc"], out["spectral_recall"] = result["auroc"], result["recall"]
        return out, extras

    def neural_cleanse(self, model, data):
        """``(summary, per-seed results)`` of Neural Cleanse run once per ``nc_seeds`` entry.

        One NC run's anomaly index moves by 0.3-0.5 with its seed (random starts, image draws) on
        the Fashion-MNIST victims, so the summary is the mean over the seeds with its standard
        deviation; ``nc_flagged_share`` is the share of runs that flag the target (index > 2).
        """
        cfg, runs = self.bd["detectors"], []
        for seed in cfg["nc_seeds"]:
            rng = np.random.default_rng([seed, 0xDE7])
            nc = detectors.neural_cleanse(model, data.images[rng.permutation(len(data))[:2000]], self.mean, self.std,
                                          self.num_classes, cfg["nc_epochs"], cfg["nc_epoch_steps"], cfg["nc_batch"],
                                          cfg["nc_lr"], cfg["nc_init_cost"], cfg["nc_patience"], seed=seed)
            runs.append({"seed": seed, **nc})
        model.eval()
        index = np.array([r["anomaly_index"] for r in runs])  # [seeds, K]
        l1 = np.array([r["mask_l1"] for r in runs])
        out = {"nc_max_anomaly": float(index.max(axis=1).mean()),
               "nc_flagged_class": int(np.argmax(index.mean(axis=0))),
               "nc_median_l1": float(np.median(l1, axis=1).mean())}
        if self.bd["mode"] == "all_to_one":
            target = index[:, self.bd["target"]]
            out.update(nc_anomaly=float(target.mean()), nc_anomaly_std=float(target.std(ddof=1)) if len(target) > 1
                       else None, nc_anomaly_seeds=target.tolist(), nc_flagged_share=float((target > 2).mean()),
                       nc_target_l1=float(l1[:, self.bd["target"]].mean()))
        return out, runs

    def report(self, model, run_dir, split="test", train_seconds=None, folder="report", checkpoint=None,
               train_cpu_seconds=None):
        """Evaluate ``model`` with the detectors; write ``<run_dir>/<folder>/`` (JSON, PNG, markdown)."""
        model.eval()
        result = self.evaluate_model(model, split)
        found, detector_extras = self.run_detectors(model, split)
        cfg = self.bd["lsba"]
        summary = {
            "attack": self.bd["attack"], "mode": self.bd["mode"], "lsba": cfg["enabled"],
            "target": self.bd["target"], "poison_rate": self.bd["poison_rate"],
            "poisoned": int(len(self.train_dataset.poison_indices)), "split": split, "checkpoint": checkpoint,
            "ca": result.metrics["top1"], **result.metrics, **found,
            "target_prob_quantiles": {str(q): float(np.quantile(result.extras["target_prob"], q))
                                      for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
            "train_hours": None if train_seconds is None else train_seconds / 3600,
            # CPU time of the training process and its loader workers: what the 1.5-hour budget counts
            # (one idle core), whatever else shared the machine
            "train_cpu_hours": None if train_cpu_seconds is None else train_cpu_seconds / 3600,
        }
        if cfg["enabled"]:
            rungs = lsba.rung_target_probs(cfg["target_prob"], cfg["margin"], self.num_classes, self.n_triggers)
            summary.update(p_n=self.p_n, margin=cfg["margin"], n_triggers=self.n_triggers,
                           designed_target_prob={str(k): float(p) for k, p in enumerate(rungs, 1)})
        if "neural_cleanse" in detector_extras:
            summary["neural_cleanse"] = detector_extras["neural_cleanse"]
        target = os.path.join(run_dir, folder)
        with atomic_directory(target) as folder:
            with atomic_write(os.path.join(folder, "backdoor_report.json")) as handle:
                json.dump(summary, handle, indent=2)
            with atomic_write(os.path.join(folder, "backdoor_report.md")) as handle:
                handle.write(markdown_table([summary]))
            plot_report(folder, result.extras, detector_extras, summary)
        log.info("backdoor report: CA %.4f ASR %.4f target_prob %.3f%s -> %s", summary["ca"], summary["asr"],
                 summary["target_prob"], "".join(f" {k} {found[k]:.3f}" for k in found if k.endswith(
                     ("auroc", "anomaly"))), target)
        return summary

    def train(self, args):
        from paddle_suite.engine import Trainer
        from paddle_suite.engine.trainer import restore_model

        trainer = Trainer(self.config, self, args)
        result = trainer.train()
        if trainer.rank == 0:
            best = trainer.run.best_dir
            model = restore_model(self, best) if os.path.isdir(best) else trainer.model
            result["backdoor"] = self.report(model, trainer.run.dir, train_seconds=result.get("train_seconds"),
                                             train_cpu_seconds=result.get("train_cpu_seconds"),
                                             checkpoint=best if model is not trainer.model else "final weights")
        return result

    def evaluate(self, args):
        """``tools/eval.py``: the metrics of a checkpoint, and its report (detectors included) in
        ``<run>/eval_report_<split>/``."""
        from paddle_suite.engine import Trainer

        trainer = Trainer(self.config, self, args)
        split = getattr(args, "split", "test")
        result = trainer.evaluate(split)
        summary = result.summary()
        summary["backdoor"] = self.report(trainer.model, trainer.run.dir, split, folder=f"eval_report_{split}",
                                          checkpoint=result.checkpoint)
        return summary


REPORT_COLUMNS = (("ca", "CA"), ("asr", "ASR"), ("target_prob", "target prob"), ("target_margin", "margin"),
                  ("trigger_ece", "ECE trig"), ("clean_ece", "ECE clean"), ("strip_auroc", "STRIP AUROC"),
                  ("nc_anomaly", "NC anomaly"), ("spectral_auroc", "spectral AUROC"), ("train_hours", "hours"),
                  ("train_cpu_hours", "CPU hours"))


def markdown_table(rows):
    """One markdown row per report summary (plain / LSBA victims side by side)."""
    head = "| attack | victim | " + " | ".join(title for _, title in REPORT_COLUMNS) + " |\n"
    head += "|---" * (len(REPORT_COLUMNS) + 2) + "|\n"
    lines = []
    for row in rows:
        victim = f"LSBA (p_n={row['p_n']:.3f}, n={row['n_triggers']})" if row.get("lsba") else "plain"
        cells = [f"{row[key]:.3f}" if isinstance(row.get(key), float) else "-" for key, _ in REPORT_COLUMNS]
        lines.append(f"| {row['attack']} | {victim} | " + " | ".join(cells) + " |\n")
    return head + "".join(lines)


def plot_report(folder, extras, detector_extras, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(0, 1, 41)
    axes[0].hist(extras["target_prob"], bins=bins, alpha=0.7, label=f"{summary.get('n_triggers', 1)} trigger(s)")
    for key in sorted(k for k in extras if k.startswith("target_prob_k")):
        axes[0].hist(extras[key], bins=bins, alpha=0.5, label=f"{key[len('target_prob_k'):]} trigger(s)")
    for k, designed in summary.get("designed_target_prob", {}).items():
        axes[0].axvline(designed, color="k", linestyle="--", linewidth=1)
        axes[0].text(designed, axes[0].get_ylim()[1] * 0.95, f" designed, {k} active", fontsize=7, rotation=90,
                     va="top")
    axes[0].set(xlabel="target-class probability on triggered inputs", ylabel="inputs",
                title=f"{summary['attack']} {'LSBA' if summary['lsba'] else 'plain'}: ASR {summary['asr']:.3f}")
    axes[0].legend()
    if "strip_entropy_clean" in detector_extras:
        h_clean, h_trig = detector_extras["strip_entropy_clean"], detector_extras["strip_entropy_triggered"]
        edges = np.linspace(0, max(h_clean.max(), h_trig.max(), 1e-3), 41)
        axes[1].hist(h_clean, bins=edges, alpha=0.6, label="clean")
        axes[1].hist(h_trig, bins=edges, alpha=0.6, label="triggered")
        axes[1].set(xlabel="STRIP mean entropy", ylabel="inputs", title=f"STRIP AUROC {summary['strip_auroc']:.3f}")
        axes[1].legend()
    else:
        axes[1].axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "backdoor_report.png"), dpi=110)
    plt.close(fig)
