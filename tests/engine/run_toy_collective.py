"""Run under `python -m paddle.distributed.launch --nproc_per_node=2`: trains the toy task and
writes each rank's final parameters to <out>/rank<k>.npz."""
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import toy_task  # noqa: E402

from paddle_suite.config import load_config  # noqa: E402
from paddle_suite.engine import Trainer  # noqa: E402

config_path, out = sys.argv[1], sys.argv[2]
config = load_config(config_path, [f"Global.output_dir={out}"])
trainer = Trainer(config, toy_task.ToyRegression(config), types.SimpleNamespace(no_progress=True))
result = trainer.train()
np.savez(os.path.join(out, f"rank{trainer.rank}.npz"), world=trainer.world, step=result["step"],
         **{k: v.numpy() for k, v in trainer.model.state_dict().items()})
