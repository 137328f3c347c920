"""Run under `python -m paddle.distributed.launch --nproc_per_node=2`: trains the toy task and
writes each rank's final parameters to <out>/rank<k>.npz. With a third argument ``N``, rank 1 sends
itself SIGTERM after step N (as fleetrun forwards a Ctrl-C, but to one rank only) and each rank
writes <out>/rank<k>.interrupted instead."""
import os
import signal
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import toy_task  # noqa: E402

from paddle_suite.config import load_config  # noqa: E402
from paddle_suite.engine import Trainer  # noqa: E402
from paddle_suite.engine.callbacks import Callback  # noqa: E402


class TerminateRankOne(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, loop):
        if loop.trainer.rank == 1 and loop.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

config_path, out = sys.argv[1], sys.argv[2]
config = load_config(config_path, [f"Global.output_dir={out}"])
callbacks = [TerminateRankOne(int(sys.argv[3]))] if len(sys.argv) > 3 else []
trainer = Trainer(config, toy_task.ToyRegression(config), types.SimpleNamespace(no_progress=True), callbacks)
try:
    result = trainer.train()
except KeyboardInterrupt:
    open(os.path.join(out, f"rank{trainer.rank}.interrupted"), "w").close()
    sys.exit(0)
np.savez(os.path.join(out, f"rank{trainer.rank}.npz"), world=trainer.world, step=result["step"],
         **{k: v.numpy() for k, v in trainer.model.state_dict().items()})
