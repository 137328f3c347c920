"""Training speed of the backdoor victims on this machine, to size their 1.5-hour budget.

    python bench/backdoor_victim_speed.py [--steps 20] [--out bench/results/backdoor_victim_speed.json]

Times optimizer steps (batch 128, SGD momentum, synthetic pixels: speed does not depend on them) of
ResNet-20 on 32x32x3 and LeNet-5 on 28x28x1, after warm-up steps. Reports wall-clock images/s and
CPU-time images/s of this process (paddle runs one thread): on a shared machine the CPU-time rate is
what an idle core would give, the wall rate what the run got now. The data loader's cost is not
included (it runs in worker processes).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import paddle_suite  # noqa: E402,F401  (sets MKL_DEBUG_CPU_TYPE before paddle loads)
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

import paddle_suite.classification  # noqa: E402,F401  (registers the architectures)
from paddle_suite.io import atomic_write  # noqa: E402
from paddle_suite.registry import ARCHS  # noqa: E402

VICTIMS = {"ResNet20/cifar10": ("ResNet20", {"num_classes": 10, "in_channels": 3}, (3, 32, 32)),
           "LeNet/fashion_mnist": ("LeNet", {"num_classes": 10, "in_channels": 1, "image_size": 28}, (1, 28, 28))}


def time_steps(name, kwargs, shape, steps, batch=128, warmup=3):
    paddle.seed(0)
    model = ARCHS.get(name)(**kwargs)
    optimizer = paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=model.parameters(), weight_decay=1e-4)
    rng = np.random.default_rng(0)
    images = paddle.to_tensor(rng.standard_normal((batch, *shape)).astype(np.float32))
    labels = paddle.to_tensor(rng.integers(0, 10, batch))
    for i in range(warmup + steps):
        if i == warmup:
            wall, cpu = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    float(loss)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_images_per_s": steps * batch / wall, "cpu_images_per_s": steps * batch / cpu}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = {victim: time_steps(*spec, args.steps) for victim, spec in VICTIMS.items()}
    result.update(load_average=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  command=" ".join(["python"] + sys.argv))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with atomic_write(args.out) as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
