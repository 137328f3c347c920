"""Loader throughput of a config's training batches for several worker counts (to choose num_workers).

    python -m paddle_suite.classification.throughput -c configs/resnet20_cifar10.yaml --workers 0 2 --batches 60

Builds the task's training loader (augmentation and mixing as configured), skips the first batches
(pool start-up, page cache) and reports, per worker count, images/s of building batches alone
(without a model) and the CPU milliseconds per batch spent in the training process and in the
workers. On a busy machine the wall-clock rate says little; the training process's CPU share is
what workers take off the training step.
"""
import argparse
import json
import os
import time

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle loads)
from paddle_suite.classification.loader import BatchLoader
from paddle_suite.classification.task import ClassificationTask
from paddle_suite.config import load_config


def measure(loader, batches, warmup=3):
    """``{"images_per_s", "main_cpu_ms_per_batch", "worker_cpu_ms_per_batch"}`` over ``batches`` batches."""
    iterator = loader.batches(epoch=1)
    for _ in range(warmup):
        next(iterator)
    cpu_before, start, images = os.times(), time.perf_counter(), 0
    for _, (x, _) in zip(range(batches), iterator):
        images += len(x)
    wall = time.perf_counter() - start
    iterator.close()
    loader.close()  # reaps the workers, so their CPU time is counted
    cpu = os.times()
    return {"images_per_s": round(images / wall, 1),
            "main_cpu_ms_per_batch": round(1000 * (cpu.user + cpu.system - cpu_before.user - cpu_before.system)
                                           / batches, 2),
            "worker_cpu_ms_per_batch": round(1000 * (cpu.children_user + cpu.children_system - cpu_before.children_user
                                                     - cpu_before.children_system) / batches, 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args(argv)
    config = load_config(args.config, args.override + ["DataLoader.num_workers=0"])
    task = ClassificationTask(config)
    base = task.train_loader
    result = {"config": args.config, "batch_size": base.batch_size, "transform": repr(base.transform),
              "mixing": base.mixer.active, "load_average": os.getloadavg()[0], "workers": {}}
    for workers in args.workers:
        loader = BatchLoader(base.dataset, base.transform, base.batch_size, base.seed, num_workers=workers,
                             mixer=base.mixer)
        try:
            result["workers"][workers] = measure(loader, args.batches)
        finally:
            loader.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
