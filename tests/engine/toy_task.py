"""A tiny regression task used to test the shared engine in isolation."""
import numpy as np
import paddle

from paddle_suite.config import Field
from paddle_suite.registry import ARCHS, TASKS
from paddle_suite.task import DenseTask


@ARCHS.register("ToyMLP")
def toy_mlp(in_dim, hidden=16, dropout=0.1):
    return paddle.nn.Sequential(
        paddle.nn.Linear(in_dim, hidden), paddle.nn.Tanh(), paddle.nn.Dropout(dropout), paddle.nn.Linear(hidden, 1)
    )


@TASKS.register("toy_regression")
class ToyRegression(DenseTask):
    schema = {
        "DataLoader": {"batch_size": 8, "num_examples": 64, "in_dim": 4},
        "Loss": {"scale": Field(1.0, float, help="multiplies the loss; a huge value forces overflow")},
    }
    best_metric = "mse"
    best_mode = "min"

    def __init__(self, config):
        super().__init__(config)
        dl = config["DataLoader"]
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(dl["num_examples"], dl["in_dim"])).astype("float32")
        w = rng.normal(size=(dl["in_dim"], 1)).astype("float32")
        self.y = np.tanh(self.x @ w).astype("float32")

    def build_model(self):
        from paddle_suite.config import build_arch

        return build_arch(self.config, in_dim=self.config["DataLoader"]["in_dim"])

    def steps_per_epoch(self, world_size=1):
        return len(self.x) // self.config["DataLoader"]["batch_size"] // world_size

    def train_batches(self, epoch, start=0, rank=0, world_size=1):
        bs = self.config["DataLoader"]["batch_size"]
        order = np.random.default_rng([self.config["Global"]["seed"], epoch]).permutation(len(self.x))
        for i in range(start, self.steps_per_epoch(world_size)):
            idx = order[(i * world_size + rank) * bs:(i * world_size + rank + 1) * bs]
            yield paddle.to_tensor(self.x[idx]), paddle.to_tensor(self.y[idx])

    def train_step(self, model, batch):
        x, y = batch
        loss = paddle.nn.functional.mse_loss(model(x), y) * self.config["Loss"]["scale"]
        return loss, x.shape[0]

    def evaluate_model(self, model, split="valid"):
        pred = model(paddle.to_tensor(self.x))
        return {"mse": float(paddle.nn.functional.mse_loss(pred, paddle.to_tensor(self.y)))}

    def input_spec(self):
        return [paddle.static.InputSpec([None, self.config["DataLoader"]["in_dim"]], "float32", "x")]
