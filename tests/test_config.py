import pytest
import toy_task  # noqa: F401  (registers toy_regression / ToyMLP)

from paddle_suite.config import ConfigError, Field, load_config, parse_override, save_config
from paddle_suite.registry import Registry


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASE = """
Global:
  task: toy_regression
  epochs: 4
Arch:
  name: ToyMLP
  hidden: 32
Optimizer:
  lr: 0.01
  schedule: {name: cosine, warmup_steps: 5}
"""


def test_defaults_filled_and_run_name_from_file(tmp_path):
    cfg = load_config(write(tmp_path, "exp1.yaml", BASE))
    assert cfg["Global"]["epochs"] == 4
    assert cfg["Global"]["seed"] == 42  # core default
    assert cfg["Global"]["run_name"] == "exp1"
    assert cfg["Arch"] == {"name": "ToyMLP", "hidden": 32, "dropout": 0.1}
    assert cfg["DataLoader"]["batch_size"] == 8  # task schema default
    assert cfg["Optimizer"]["schedule"]["gamma"] == 0.1


def test_base_include_and_nested_merge(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    sub = tmp_path / "sub"
    sub.mkdir()
    child = write(sub, "child.yaml", "_BASE_: ../base.yaml\nOptimizer:\n  schedule: {warmup_steps: 0}\n")
    cfg = load_config(child)
    assert cfg["Optimizer"]["schedule"] == {**cfg["Optimizer"]["schedule"], "name": "cosine", "warmup_steps": 0}
    assert cfg["Optimizer"]["lr"] == 0.01 and cfg["Arch"]["hidden"] == 32


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, "a.yaml", BASE)
    cfg = load_config(path, ["Global.epochs=7", "Optimizer.lr=1e-3", "Global.amp=false", "Arch.hidden=8"])
    assert cfg["Global"]["epochs"] == 7 and isinstance(cfg["Global"]["epochs"], int)
    assert cfg["Optimizer"]["lr"] == pytest.approx(1e-3) and isinstance(cfg["Optimizer"]["lr"], float)
    assert cfg["Global"]["amp"] is False
    assert parse_override("Metric.splits=[valid, test]") == (["Metric", "splits"], ["valid", "test"])


def test_int_accepted_for_float_and_yaml11_exponent(tmp_path):
    cfg = load_config(write(tmp_path, "a.yaml", BASE.replace("lr: 0.01", "lr: 1e-2")), ["Optimizer.weight_decay=0"])
    assert cfg["Optimizer"]["lr"] == 0.01 and cfg["Optimizer"]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["Global.epoch=3"], r"command line \(-o Global.epoch=3\): Global.epoch: unknown key. Did you mean 'Global.epochs'"),
        (["Optimizer.shedule.name=step"], r"Optimizer.shedule: unknown key. Did you mean 'Optimizer.schedule'"),
        (["Global.epochs=ten"], r"Global.epochs: expected int, got str 'ten'"),
        (["Global.amp=1"], r"Global.amp: expected bool, got int 1"),
        (["Optimizer.name=Adamm"], r"'Adamm' is not one of .* Did you mean 'Adam'"),
        (["Arch.hiden=3"], r"Arch.hiden: unknown key. Did you mean 'Arch.hidden'"),
        (["Arch.in_dim=3"], r"Arch.in_dim: is set by the task from the data"),
        (["Arch.name=ToyMPL"], r"unknown architecture 'ToyMPL'. Did you mean 'ToyMLP'"),
        (["Global.task=toy_regresion"], r"unknown task 'toy_regresion'. Did you mean 'toy_regression'"),
        (["Global.epochs"], r"must look like Section.key=value"),
        (["epochs=3"], r"must name a section and a key"),
        (["Globall.seed=3"], r"Globall: unknown key. Did you mean 'Global'"),
    ],
)
def test_override_errors_name_key_source_and_suggestion(tmp_path, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, "a.yaml", BASE), overrides)


def test_error_names_the_file_that_set_the_key(tmp_path):
    base = write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "_BASE_: base.yaml\nDataLoader:\n  batchsize: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(child)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "child.yaml"))
    assert "DataLoader.batchsize: unknown key. Did you mean 'DataLoader.batch_size'" in message
    assert base  # the base is fine; the child introduced the error


def test_missing_required_keys(tmp_path):
    with pytest.raises(ConfigError, match="Global.task is missing"):
        load_config(write(tmp_path, "a.yaml", "Global: {epochs: 1}\n"))
    with pytest.raises(ConfigError, match="Arch.name is missing"):
        load_config(write(tmp_path, "b.yaml", "Global: {task: toy_regression}\n"))
    with pytest.raises(ConfigError, match="Global.task: is required and cannot be null"):
        load_config(write(tmp_path, "c.yaml", BASE), ["Global.task=null"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "bad.yaml", "Global: {task: [\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "list.yaml", "- 1\n- 2\n"))
    write(tmp_path, "x.yaml", "_BASE_: y.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(write(tmp_path, "y.yaml", "_BASE_: x.yaml\n"))
    with pytest.raises(ConfigError, match=r"config file not found: .*missing.yaml \(included from"):
        load_config(write(tmp_path, "z.yaml", "_BASE_: missing.yaml\n"))
    with pytest.raises(ConfigError, match="Global: must be a mapping"):
        load_config(write(tmp_path, "w.yaml", "Global: 3\n"))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "a.yaml", BASE), ["Global.seed=3"])
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(str(tmp_path / "saved.yaml"))
    assert {k: v for k, v in again.items() if k != "_source"} == {k: v for k, v in cfg.items() if k != "_source"}


def test_field_and_registry_basics():
    assert Field(0.5).type is float and Field([1]).type is list and Field().required
    reg = Registry("widget")
    reg.register("a")(object)
    with pytest.raises(KeyError, match="registered twice"):
        reg.register("a")(int)


# A fresh interpreter whose capability imports are slow: the second thread asks for a task while the
# first is still importing, so a half-filled registry would answer "unknown task".
CONCURRENT_LOOKUP = """
import importlib, threading, time
real_import = importlib.import_module
def slow_import(name, *args, **kwargs):
    if name.startswith("paddle_suite."):
        time.sleep(0.2)
    return real_import(name, *args, **kwargs)
importlib.import_module = slow_import
from paddle_suite.registry import TASKS
errors = []
def look_up():
    try:
        TASKS.get("oie")
    except KeyError as err:
        errors.append(str(err))
threads = [threading.Thread(target=look_up) for _ in range(2)]
threads[0].start(); time.sleep(0.05); threads[1].start()
for thread in threads:
    thread.join()
assert not errors, errors
"""


def test_registry_lookups_from_two_threads_wait_for_every_capability():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", CONCURRENT_LOOKUP], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


CONFIG_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def test_configs_hold_settings_not_history():
    """Probe tables and dated results live in bench/*_config_notes.md, not in config comments."""
    import re

    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        text = path.read_text()
        comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
        assert len(comments) <= 15, f"{path.name}: {len(comments)} comment lines"
        dated = re.search(r"\b20\d\d-\d\d-\d\d\b", text)
        assert dated is None, f"{path.name}: dated measurement {dated.group()!r}: move it to bench/*_config_notes.md"


def test_spacee_fb15k_is_the_fb15k237_recipe_on_fb15k():
    fb15k, fb15k237 = (load_config(str(CONFIG_DIR / f"spacee_{name}.yaml")) for name in ("fb15k", "fb15k237"))
    differ = {(section, key) for section in fb15k if isinstance(fb15k[section], dict)
              for key in fb15k[section] if fb15k[section][key] != fb15k237[section][key]}
    assert differ == {("Global", "max_steps"), ("Global", "run_name"), ("DataLoader", "dataset"),
                      ("Optimizer", "lr"), ("Optimizer", "schedule")}
