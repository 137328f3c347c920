"""Optimiser, parameter groups and learning-rate schedule from the ``Optimizer`` config section.

Parameter groups (both off by default, which gives one group of every parameter as before):

* ``Optimizer.no_weight_decay``: parameters excluded from ``weight_decay``. Each entry is a regular
  expression searched in the parameter's structured name (``backbone.norm1.weight``,
  ``head.bias``), e.g. ``[bias, norm]``; the entry ``1d`` matches every one-dimensional parameter
  (biases and norm scales of most layers), the usual "no decay on norms and biases" rule.
* ``Optimizer.param_groups``: ``[{match: REGEX, lr_mult: FLOAT, weight_decay: FLOAT}, ...]``; a
  parameter joins the first group whose ``match`` its name contains, and its learning rate is the
  schedule's times ``lr_mult`` (default 1.0); ``weight_decay`` (default ``Optimizer.weight_decay``)
  is that group's decay. ``no_weight_decay`` applies inside every group.

A pattern that matches no parameter is an error (a misspelt name would otherwise be ignored).
``weight_decay`` is L2 regularisation added to the gradient, except for ``AdamW`` (decoupled).
"""
import re

import paddle

from paddle_suite.config import ConfigError

ONE_DIMENSIONAL = "1d"


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


def _named(parameters):
    """``[(name, parameter)]`` from a Layer (structured names) or an iterable of parameters (their names)."""
    if isinstance(parameters, paddle.nn.Layer):
        return list(parameters.named_parameters())
    return [(p.name, p) for p in parameters]


def _check_group(index, group):
    where = f"Optimizer.param_groups[{index}]"
    if not isinstance(group, dict) or "match" not in group:
        raise ConfigError(f"{where}: expected a mapping with 'match' (and 'lr_mult', 'weight_decay'), got {group!r}")
    unknown = set(group) - {"match", "lr_mult", "weight_decay"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: match, lr_mult, weight_decay")
    for key in ("lr_mult", "weight_decay"):
        if key in group and (isinstance(group[key], bool) or not isinstance(group[key], (int, float))
                             or group[key] < 0):
            raise ConfigError(f"{where}.{key}: expected a number >= 0, got {group[key]!r}")
    try:
        re.compile(str(group["match"]))
    except re.error as err:
        raise ConfigError(f"{where}.match: {group['match']!r} is not a regular expression: {err}") from None


def parameter_groups(opt_cfg, named):
    """Paddle parameter groups ``[{"params", "learning_rate", "weight_decay"}]`` for ``named``
    ``[(name, parameter)]``, or None when the config asks for none (one group, as paddle's default)."""
    groups_cfg = opt_cfg.get("param_groups") or []
    no_decay = [str(p) for p in opt_cfg.get("no_weight_decay") or []]
    if not groups_cfg and not no_decay:
        return None
    for index, group in enumerate(groups_cfg):
        _check_group(index, group)
    decoupled = opt_cfg["name"] == "AdamW"
    # L2 decay of 0 is "no regularizer" (None); AdamW's decoupled coefficient is a float
    off = 0.0 if decoupled else None
    default_decay = opt_cfg["weight_decay"]
    used = {str(pattern): False for pattern in [g["match"] for g in groups_cfg] + no_decay}
    buckets = {}
    for name, param in named:
        index = next((i for i, g in enumerate(groups_cfg) if re.search(str(g["match"]), name)), None)
        group = groups_cfg[index] if index is not None else {}
        if index is not None:
            used[str(group["match"])] = True
        exempt = [p for p in no_decay if (p == ONE_DIMENSIONAL and len(param.shape) == 1) or
                  (p != ONE_DIMENSIONAL and re.search(p, name))]
        for pattern in exempt:
            used[pattern] = True
        decay = off if exempt else float(group.get("weight_decay", default_decay))
        if not decoupled and decay == 0.0:
            decay = None
        key = (float(group.get("lr_mult", 1.0)), decay)
        buckets.setdefault(key, []).append(param)
    unused = [p for p, hit in used.items() if not hit]
    if unused:
        names = ", ".join(name for name, _ in named[:12]) + (", ..." if len(named) > 12 else "")
        raise ConfigError(f"Optimizer.param_groups / no_weight_decay: {unused} match no parameter. Names: {names}")
    return [{"params": params, "learning_rate": lr_mult, "weight_decay": decay}
            for (lr_mult, decay), params in buckets.items()]


def build_optimizer(opt_cfg, parameters, total_steps):
    """Return ``(optimizer, scheduler_or_None)``; ``parameters`` is a Layer (names for the groups),
    an iterable of parameters, or None for a static program (all of its trainable parameters)."""
    lr = build_scheduler(opt_cfg, total_steps)
    clip = paddle.nn.ClipGradByGlobalNorm(opt_cfg["grad_clip"]) if opt_cfg["grad_clip"] > 0 else None
    if parameters is None:  # a static program: paddle optimises all its trainable parameters
        if opt_cfg.get("param_groups") or opt_cfg.get("no_weight_decay"):
            raise ConfigError("Optimizer.param_groups / no_weight_decay need a dygraph model; "
                              "this task builds a static program (remove them)")
        named, groups = None, None
    else:
        named = _named(parameters)
        groups = parameter_groups(opt_cfg, named)
    common = dict(learning_rate=lr, parameters=groups or (None if named is None else [p for _, p in named]),
                  grad_clip=clip)
    # with groups each one carries its decay; the optimizer's own would apply to the groups without one
    wd = None if groups else (opt_cfg["weight_decay"] or None)
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
