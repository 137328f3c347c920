"""What a person watches during training: a tqdm bar with ETA, log lines, VisualDL scalars.

VisualDL logs go to ``<run_dir>/vdl``; view them with
``visualdl --logdir <run_dir>/vdl --host 127.0.0.1 --port 8040 --language en``.
"""
import logging
import time

from tqdm import tqdm

log = logging.getLogger("paddle_suite")


class Monitor:
    def __init__(self, run_directory, total_steps, start_step, progress, log_every=10):
        self.writer = None
        if run_directory is not None:
            from visualdl import LogWriter

            self.writer = LogWriter(logdir=f"{run_directory}/vdl")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True) if progress else None
        self.log_every = log_every
        self._window_start = time.perf_counter()
        self._window_examples = 0
        self._window_loss = 0.0
        self._window_steps = 0

    def step(self, step, loss, lr, num_examples):
        self._window_examples += num_examples
        self._window_loss += loss
        self._window_steps += 1
        if self.bar is not None:
            self.bar.update(1)
        if self._window_steps < self.log_every:
            return
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        mean_loss = self._window_loss / self._window_steps
        speed = self._window_examples / elapsed
        self.scalars("train", {"loss": mean_loss, "lr": lr, "samples_per_s": speed}, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{speed:.0f}")
        else:
            log.info("step %d loss %.5f lr %.3e %.0f samples/s", step, mean_loss, lr, speed)
        self._window_start = time.perf_counter()
        self._window_examples = self._window_loss = self._window_steps = 0

    def scalars(self, prefix, values, step):
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(tag=f"{prefix}/{name}", value=float(value), step=step)

    def message(self, text):
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
