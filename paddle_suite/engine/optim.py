"""Optimiser and learning-rate schedule from the ``Optimizer`` config section."""
import paddle


def build_scheduler(opt_cfg, total_steps):
    """Return a paddle LRScheduler stepped once per training step, or a float for a constant LR."""
    sched = opt_cfg["schedule"]
    lr = opt_cfg["lr"]
    warmup = sched["warmup_steps"]
    name = sched["name"]
    if name == "cosine":
        body = paddle.optimizer.lr.CosineAnnealingDecay(
            learning_rate=lr, T_max=max(1, total_steps - warmup), eta_min=sched["min_lr"]
        )
    elif name == "step":
        body = paddle.optimizer.lr.StepDecay(learning_rate=lr, step_size=sched["step_size"], gamma=sched["gamma"])
    else:
        body = lr
    if warmup > 0 and lr > 0:  # paddle refuses a warmup from 0 to 0
        return paddle.optimizer.lr.LinearWarmup(learning_rate=body, warmup_steps=warmup, start_lr=0.0, end_lr=lr)
    return body


def build_optimizer(opt_cfg, parameters, total_steps):
    """Return ``(optimizer, scheduler_or_None)``."""
    lr = build_scheduler(opt_cfg, total_steps)
    clip = paddle.nn.ClipGradByGlobalNorm(opt_cfg["grad_clip"]) if opt_cfg["grad_clip"] > 0 else None
    common = dict(learning_rate=lr, parameters=parameters, grad_clip=clip)
    wd = opt_cfg["weight_decay"] or None
    name = opt_cfg["name"]
    if name == "Adam":
        opt = paddle.optimizer.Adam(weight_decay=wd, lazy_mode=opt_cfg["lazy_mode"],
                                    use_multi_tensor=opt_cfg["multi_tensor"], **common)
    elif name == "AdamW":
        opt = paddle.optimizer.AdamW(weight_decay=opt_cfg["weight_decay"], **common)
    elif name == "SGD":
        opt = paddle.optimizer.SGD(weight_decay=wd, **common)
    elif name == "Momentum":
        opt = paddle.optimizer.Momentum(momentum=opt_cfg["momentum"], weight_decay=wd,
                                        use_multi_tensor=opt_cfg["multi_tensor"], **common)
    elif name == "Adagrad":
        opt = paddle.optimizer.Adagrad(weight_decay=wd, **common)
    else:  # the config schema restricts the names; this guards direct callers
        raise ValueError(f"Optimizer.name: unknown optimizer '{name}'")
    scheduler = lr if isinstance(lr, paddle.optimizer.lr.LRScheduler) else None
    return opt, scheduler
