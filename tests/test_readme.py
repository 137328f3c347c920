"""The README's commands stay true: every script, module and config they name exists, every config loads
with the overrides the command gives, and every flag is one the named program accepts.

Running each command to the end is the job of the capability tests (they run the same tools in a
subprocess on small real data); this test catches the drift between the README and the code, such as a
renamed flag or config, in a second."""
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

from paddle_suite.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
# programs of other packages the README runs (their flags are theirs to keep)
EXTERNAL = {"pip", "visualdl", "fleetrun", "cut", "sort"}
FLAG = re.compile(r"^--[a-z][a-z0-9_-]*")


def readme_commands():
    """(line number, command) for every line of the README's ```bash blocks, comments and options'
    optional brackets removed (``[-o X]`` documents ``-o X``), split at pipes and ``&&``."""
    commands, in_bash = [], False
    with open(README, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith("```"):
                in_bash = line.strip() == "```bash"
                continue
            if not in_bash:
                continue
            text = re.sub(r"\s#\s.*$", "", line)
            text = re.sub(r"\[([^]]*)\]", lambda m: m.group(1).replace("|", " "), text)  # [a | b]: a or b
            for part in re.split(r"\||&&", text):
                if part.strip():
                    commands.append((number, part.strip()))
    return commands


def segments(tokens):
    """Split a command's tokens into (kind, program, arguments): a program is ``python tools/*.py``,
    ``python bench/*.py``, ``python -m module`` or an external command; a launcher's arguments end where
    the script it launches starts."""
    found, index = [], 0
    while index < len(tokens):
        token = tokens[index]
        if token in ("python", "python3") and tokens[index + 1:index + 2] == ["-m"]:
            found.append(("module", tokens[index + 2], []))
            index += 3
            continue
        if token in ("python", "python3"):
            index += 1
            continue
        if token.endswith(".py") and token.split("/")[0] in ("tools", "bench"):
            found.append(("script", token, []))
        elif not found:
            found.append(("external", token, []))
        else:
            found[-1][2].append(token)
        index += 1
    return found


@functools.lru_cache(maxsize=None)
def help_text(kind, name, subcommand=None):
    command = [sys.executable, *(["-m", name] if kind == "module" else [os.path.join(ROOT, name)])]
    if subcommand:
        command.append(subcommand)
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, f"{name} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) > 30, "the README's ```bash blocks were not found"


@pytest.mark.parametrize("number, command", COMMANDS, ids=[f"line{n}" for n, _ in COMMANDS])
def test_readme_command_names_real_things(number, command):
    where = f"README.md line {number}: {command}"
    for kind, name, args in segments(shlex.split(command)):
        if kind == "external":
            assert name in EXTERNAL, f"{where}: '{name}' is neither a tool, a bench script nor a known program"
            # a launcher's script is checked as its own segment
            continue
        if kind == "module":
            assert importlib.util.find_spec(name) is not None, f"{where}: no module {name}"
            if not name.startswith("paddle_suite"):
                continue
        else:
            assert os.path.isfile(os.path.join(ROOT, name)), f"{where}: no file {name}"
        usage = help_text(kind, name)
        subcommands = re.search(r"\{([\w,-]+)\}", usage)
        if subcommands and args and args[0] in subcommands.group(1).split(","):
            usage = help_text(kind, name, args[0])
        for arg in args:
            flag = FLAG.match(arg)
            if flag:
                option = flag.group()
                assert re.search(re.escape(option) + r"\b", usage), f"{where}: {name} has no option {option}"
        config = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-c"]
        overrides = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-o"]
        if config:
            path = os.path.join(ROOT, config[0])
            assert os.path.isfile(path), f"{where}: no config {config[0]}"
            try:
                load_config(path, overrides)
            except ConfigError as err:
                pytest.fail(f"{where}: {err}")
