"""Where datasets are found.

Search order for a dataset at relative path ``relpath`` (e.g. ``kg/FB15k-237``):
1. an explicit path from the config (``DataLoader.data_path`` or similar), if given;
2. ``$PADDLE_SUITE_DATA/<relpath>``;
3. ``./data/<relpath>`` (relative to the working directory);
4. ``../shared/data/<relpath>`` relative to the working directory, then to the repository
   root (the layout of the development machines and CI).
"""
import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


class DataError(ValueError):
    """Bad input data: the message names the file (and line), what is wrong and how to fix it.

    Capabilities raise it (or a subclass) for malformed or empty data; the command-line tools print
    the message as one line and exit with status 2.
    """


class DatasetNotFound(FileNotFoundError):
    pass


def shared_data_dir():
    """The ``shared/data`` folder beside the checkout, or None when it is absent."""
    for base in (Path.cwd(), _REPO_ROOT):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None


def cache_root(explicit=None):
    """Where derived data is cached: ``explicit``, else ``$PADDLE_SUITE_CACHE``, else
    ``$XDG_CACHE_HOME/paddle_suite`` or ``~/.cache/paddle_suite``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("PADDLE_SUITE_CACHE"):
        return Path(os.environ["PADDLE_SUITE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "paddle_suite"


def candidate_paths(relpath, explicit=None):
    paths = []
    if explicit:
        paths.append(Path(explicit).expanduser())
    if os.environ.get("PADDLE_SUITE_DATA"):
        paths.append(Path(os.environ["PADDLE_SUITE_DATA"]).expanduser() / relpath)
    paths.append(Path("data") / relpath)
    for base in (Path.cwd(), _REPO_ROOT):
        paths.append((base / ".." / "shared" / "data" / relpath).resolve())
    unique = []
    for p in paths:
        if p not in unique:
            unique.append(p)
    return unique


def find_dataset(relpath, explicit=None, required=(), how_to_get=""):
    """Return the first candidate directory that holds every file in ``required``.

    An explicit path is authoritative: when given and unusable, the error names it alone
    rather than silently falling back to another copy of the data.
    """
    candidates = candidate_paths(relpath, explicit)[:1] if explicit else candidate_paths(relpath)
    tried = []
    for path in candidates:
        missing = [name for name in required if not (path / name).is_file()]
        if path.is_dir() and not missing:
            return path
        tried.append(f"  {path}" + (f" (missing {', '.join(missing)})" if path.is_dir() else " (no such directory)"))
    message = f"dataset '{relpath}' not found. Tried:\n" + "\n".join(tried)
    if not explicit:
        message += (
            f"\nPut the files in one of these places (e.g. $PADDLE_SUITE_DATA/{relpath}/) "
            "or give the path in the config."
        )
    if how_to_get:
        message += f"\n{how_to_get}"
    raise DatasetNotFound(message)
