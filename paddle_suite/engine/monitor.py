"""What a person watches during training: a tqdm bar with ETA (or log lines), and the run's metrics
sink (``Run.metrics``: VisualDL scalars in ``<run_dir>/vdl`` and ``<run_dir>/metrics.jsonl``).

View the scalars with ``visualdl --logdir <run_dir>/vdl --host 127.0.0.1 --port 8040 --language en``:
``train/loss``, ``train/lr``, ``train/samples_per_s`` (means over ``Global.log_every`` steps) and
``valid/<metric>``. Only rank 0 writes.
"""
import logging
import time

from tqdm import tqdm

from paddle_suite.engine.callbacks import Callback

log = logging.getLogger("paddle_suite")


def _headline(metrics, limit=8):
    """Top-level metrics first (``mrr`` before ``N-1/head/mrr``), for one readable log line."""
    ordered = sorted(metrics.items(), key=lambda kv: (kv[0].count("/"), kv[0]))
    return ", ".join(f"{k}={v:.4f}" for k, v in ordered[:limit])


class Monitor(Callback):
    def __init__(self, progress, log_every=10):
        self.progress, self.log_every = progress, log_every
        self.bar = self.sink = None

    def on_train_start(self, loop):
        self.sink = loop.run.metrics(enabled=loop.is_main)
        if self.progress and loop.is_main:
            self.bar = tqdm(total=loop.total, initial=loop.step, desc="train", dynamic_ncols=True)
        self._reset_window()

    def _reset_window(self):
        self._window_start = time.perf_counter()
        self._window_examples = self._window_steps = 0
        self._window_loss = 0.0

    def on_step_end(self, loop):
        self._window_examples += loop.num_examples
        self._window_loss += loop.loss
        self._window_steps += 1
        if self.bar is not None:
            self.bar.update(1)
        if self._window_steps < self.log_every:
            return
        speed = self._window_examples / max(time.perf_counter() - self._window_start, 1e-9)
        mean_loss = self._window_loss / self._window_steps
        self.sink.log("train", {"loss": mean_loss, "lr": loop.lr, "samples_per_s": speed}, loop.step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{loop.lr:.2e}", ex_s=f"{speed:.0f}")
        elif loop.is_main:
            log.info("step %d loss %.5f lr %.3e %.0f samples/s", loop.step, mean_loss, loop.lr, speed)
        self._reset_window()

    def on_evaluate(self, loop, result):
        self.sink.log(result.split, result.metrics, loop.step)
        loop.message(f"step {loop.step}: {_headline(result.metrics)}")

    def on_exit(self, loop):
        if self.bar is not None:
            self.bar.close()
        if self.sink is not None:
            self.sink.close()
