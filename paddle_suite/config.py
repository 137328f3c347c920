"""YAML configs with PaddleClas-style sections, validated against a schema before any work starts.

A config is a mapping of sections (``Global``, ``Arch``, ``Loss``, ``Optimizer``, ``DataLoader``,
``Metric`` and task-specific ones). ``_BASE_: other.yaml`` (or a list) at the top of a file
inherits from other files, resolved relative to the including file; later values win, and
sections merge key by key. ``-o Section.key=value`` overrides (the value is parsed as YAML, so
``-o Global.epochs=5`` is an int and ``-o Metric.splits=[valid,test]`` a list).

The schema is ``CORE_SCHEMA`` merged with the selected task's ``schema``. The ``Arch`` section is
checked against the keyword parameters of the architecture factory named by ``Arch.name``.
Unknown keys, wrong types and missing required keys raise ``ConfigError`` naming the key, the
file (or the ``-o`` override) it came from, and the closest valid key.
"""
import copy
import difflib
import inspect
from pathlib import Path

import yaml

from paddle_suite.io import atomic_write
from paddle_suite.registry import ARCHS, TASKS


class ConfigError(ValueError):
    pass


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()


class Field:
    """One config key: its default (or ``REQUIRED``), accepted type(s) and allowed values."""

    def __init__(self, default=REQUIRED, type=None, choices=None, help=""):
        self.default = default
        if type is None and default is not REQUIRED and default is not None:
            type = _type_of(default)
        self.type = type
        self.choices = tuple(choices) if choices else None
        self.help = help

    @property
    def required(self):
        return self.default is REQUIRED


def _type_of(value):
    if isinstance(value, bool):
        return bool
    if isinstance(value, float):
        return float
    if isinstance(value, int):
        return int
    if isinstance(value, (list, tuple)):
        return list
    return type(value)


CORE_SCHEMA = {
    "Global": {
        "task": Field(REQUIRED, str, help="registered task name, e.g. kge"),
        "output_dir": "./output",
        "run_name": Field(None, str, help="defaults to the config file's name"),
        "seed": 42,
        "epochs": 1,
        "max_steps": Field(0, int, help="0 = train for Global.epochs"),
        "eval_every": Field(0, int, help="steps between evaluations; 0 = end of each epoch"),
        "log_every": 10,
        "save_every": Field(0, int, help="steps between checkpoints; 0 = end of each epoch"),
        "keep_checkpoints": 2,
        "resume": Field("auto", str, help="auto | none | path of a checkpoint directory"),
        "checkpoint": Field(None, str, help="checkpoint directory for eval / export"),
        "device": Field("cpu", str, choices=("cpu", "gpu")),
        "amp": Field(False, bool, help="automatic mixed precision (GPU only)"),
        "early_stop_patience": Field(0, int, help="evaluations without improvement; 0 = off"),
        "test_split": Field(None, str, help="after training, evaluate the best checkpoint on this split"),
        "progress": True,
        "data_root": Field(None, str),
    },
    "Optimizer": {
        "name": Field("Adam", str, choices=("Adam", "AdamW", "SGD", "Momentum", "Adagrad")),
        "lr": 0.001,
        "weight_decay": 0.0,
        "grad_clip": Field(0.0, float, help="global-norm clipping; 0 = off"),
        "lazy_mode": Field(False, bool, help="Adam: update only rows with gradients"),
        "multi_tensor": Field(False, bool, help="Adam/Momentum: one merged op over all (dense) parameters"),
        "momentum": 0.9,
        "no_weight_decay": Field([], list, help="parameters without weight decay: name regexes, or 1d for every "
                                 "one-dimensional parameter, e.g. [1d] or [bias, norm] (engine/optim.py)"),
        "param_groups": Field([], list, help="[{match: REGEX, lr_mult: 10.0, weight_decay: ...}]: per-group learning "
                              "rate multiplier and decay, first match wins (engine/optim.py)"),
        "schedule": {
            "name": Field("constant", str, choices=("constant", "cosine", "step")),
            "warmup_steps": 0,
            "step_size": 1000,
            "gamma": 0.1,
            "min_lr": 0.0,
        },
    },
    "Arch": {},  # checked against the factory signature of Arch.name
}


# ---------------------------------------------------------------------------------- reading
def _read(path, stack=()):
    """Read one YAML file with its ``_BASE_`` chain; return (values, origins)."""
    path = Path(path).resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"_BASE_ include cycle: {chain}")
    if not path.is_file():
        where = f" (included from {stack[-1]})" if stack else ""
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (Global:, Arch:, ...)")
    bases = data.pop("_BASE_", [])
    values, origins = {}, {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_values, base_origins = _read(path.parent / base, (*stack, path))
        _merge(values, base_values, origins, base_origins)
    _merge(values, data, origins, str(path))
    return values, origins


def _merge(dst, src, origins, src_origin, prefix=""):
    """Deep-merge ``src`` into ``dst``; ``src_origin`` is a file name or a dict of origins."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origins, src_origin, dotted + ".")
            continue
        dst[key] = copy.deepcopy(value)
        if isinstance(src_origin, dict):
            for k, v in src_origin.items():
                if k == dotted or k.startswith(dotted + "."):
                    origins[k] = v
        else:
            for dotted_leaf in _leaf_keys(value, dotted):
                origins[dotted_leaf] = src_origin


def _leaf_keys(value, dotted):
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaf_keys(v, f"{dotted}.{k}")
    yield dotted


def parse_override(text):
    """``'Section.key=value'`` -> (['Section', 'key'], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like Section.key=value (e.g. -o Global.epochs=5)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override '{text}': the key must name a section and a key, e.g. Global.epochs")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML: {err}") from None
    return parts, value


def apply_overrides(values, origins, overrides):
    for text in overrides or ():
        parts, value = parse_override(text)
        node = values
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = node[part]
        node[parts[-1]] = value
        for leaf in _leaf_keys(value, ".".join(parts)):
            origins[leaf] = f"command line (-o {text})"


# ------------------------------------------------------------------------------- validation
class _Validator:
    def __init__(self, origins, source):
        self.origins = origins
        self.source = source

    def where(self, dotted):
        origin = self.origins.get(dotted)
        if origin is None:  # a section named in a file: report the file of any key under it
            origin = next((v for k, v in self.origins.items() if k.startswith(dotted + ".")), self.source)
        return origin

    def fail(self, dotted, message):
        raise ConfigError(f"{self.where(dotted)}: {dotted}: {message}")

    def section(self, values, schema, prefix):
        if not isinstance(values, dict):
            self.fail(prefix.rstrip("."), f"must be a mapping of keys, got {type(values).__name__} {values!r}")
        for key in values:
            if key not in schema:
                close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1, cutoff=0.5)
                hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
                valid = ", ".join(str(k) for k in schema) or "(none)"
                self.fail(f"{prefix}{key}", f"unknown key.{hint} Valid keys here: {valid}")
        out = {}
        for key, spec in schema.items():
            dotted = f"{prefix}{key}"
            if isinstance(spec, dict):
                out[key] = self.section(values.get(key, {}) or {}, spec, dotted + ".")
                continue
            field = spec if isinstance(spec, Field) else Field(spec)
            if key in values:
                out[key] = self.value(dotted, values[key], field)
            elif field.required:
                raise ConfigError(
                    f"{self.source}: required key {dotted} is missing"
                    + (f" ({field.help})" if field.help else "")
                )
            else:
                out[key] = copy.deepcopy(field.default)
        return out

    def value(self, dotted, value, field):
        if value is None:
            if field.required:
                self.fail(dotted, "is required and cannot be null")
            return None
        expected = field.type
        if expected is float and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if expected is not None and not _is_instance(value, expected):
            names = "/".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__
            self.fail(dotted, f"expected {names}, got {type(value).__name__} {value!r}")
        if expected is float:
            value = float(value)
        if expected is list and isinstance(value, tuple):
            value = list(value)
        if field.choices and value not in field.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in field.choices], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            self.fail(dotted, f"{value!r} is not one of {', '.join(map(str, field.choices))}.{hint}")
        return value


def _is_instance(value, expected):
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def arch_schema(name):
    """Schema of the ``Arch`` section for the factory registered as ``name``.

    Keyword parameters with defaults are user keys typed by their default; parameters without a
    default (e.g. ``num_entities``) are supplied by the task from the data.
    """
    factory = ARCHS.get(name)
    schema = {"name": Field(REQUIRED, str)}
    for param in inspect.signature(factory).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.default is param.empty:
            continue
        schema[param.name] = param.default if isinstance(param.default, Field) else Field(param.default)
    return schema


def task_schema(task_cls):
    schema = copy.deepcopy(CORE_SCHEMA)
    for section, spec in getattr(task_cls, "schema", {}).items():
        if isinstance(spec, dict) and isinstance(schema.get(section), dict):
            schema[section].update(copy.deepcopy(spec))
        else:
            schema[section] = copy.deepcopy(spec)
    return schema


def load_config(path, overrides=()):
    """Read, merge, override and validate a config; return nested dicts with every default filled."""
    values, origins = _read(path)
    apply_overrides(values, origins, overrides)
    source = str(Path(path).resolve())
    check = _Validator(origins, source)

    global_section = values.get("Global") or {}
    if not isinstance(global_section, dict):
        check.fail("Global", f"must be a mapping of keys, got {type(global_section).__name__} {global_section!r}")
    task_name = global_section.get("task")
    if "task" in global_section and task_name is None:
        check.fail("Global.task", f"is required and cannot be null (one of: {', '.join(TASKS.names())})")
    if task_name is None:
        raise ConfigError(f"{source}: required key Global.task is missing (one of: {', '.join(TASKS.names())})")
    try:
        task_cls = TASKS.get(task_name)
    except KeyError as err:
        check.fail("Global.task", err.args[0])
    schema = task_schema(task_cls)

    arch = values.get("Arch")
    if arch is not None or getattr(task_cls, "needs_arch", True):
        if not isinstance(arch, dict) or "name" not in arch:
            raise ConfigError(f"{source}: required key Arch.name is missing (one of: {', '.join(ARCHS.names())})")
        try:
            schema["Arch"] = arch_schema(arch["name"])
        except KeyError as err:
            check.fail("Arch.name", err.args[0])
        supplied = set(arch) - set(schema["Arch"])
        factory_params = inspect.signature(ARCHS.get(arch["name"])).parameters
        for key in supplied & set(factory_params):
            check.fail(f"Arch.{key}", "is set by the task from the data; remove it from the config")
    else:
        schema.pop("Arch")

    config = check.section(values, schema, "")
    if config["Global"]["run_name"] is None:
        config["Global"]["run_name"] = Path(path).stem
    config["_source"] = source
    return config


def save_config(config, path):
    """Write the resolved config (what the run really used) as YAML, atomically."""
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    with atomic_write(path) as handle:
        yaml.safe_dump(clean, handle, sort_keys=False)


def build_arch(config, **from_data):
    """Call the factory named by ``Arch.name`` with the config's keys and the task's data-derived ones."""
    kwargs = {k: v for k, v in config["Arch"].items() if k != "name"}
    factory = ARCHS.get(config["Arch"]["name"])
    missing = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in from_data
    ]
    if missing:
        raise ConfigError(f"architecture {config['Arch']['name']} needs {', '.join(missing)}, which the task did not supply")
    accepted = inspect.signature(factory).parameters
    return factory(**kwargs, **{k: v for k, v in from_data.items() if k in accepted})
