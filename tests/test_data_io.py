import os

import pytest

from paddle_suite.data import DatasetNotFound, find_dataset, shared_data_dir
from paddle_suite.io import atomic_directory, atomic_write


def test_find_dataset_search_order(tmp_path, monkeypatch):
    env_root, cwd = tmp_path / "env", tmp_path / "cwd"
    (env_root / "kg" / "toy").mkdir(parents=True)
    (env_root / "kg" / "toy" / "train.txt").write_text("a\tr\tb\n")
    (cwd / "data" / "kg" / "toy").mkdir(parents=True)
    (cwd / "data" / "kg" / "toy" / "train.txt").write_text("a\tr\tb\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PADDLE_SUITE_DATA", str(env_root))
    assert find_dataset("kg/toy", required=("train.txt",)) == env_root / "kg" / "toy"
    monkeypatch.delenv("PADDLE_SUITE_DATA")
    assert find_dataset("kg/toy", required=("train.txt",)).resolve() == (cwd / "data" / "kg" / "toy").resolve()
    explicit = tmp_path / "mine"
    explicit.mkdir()
    (explicit / "train.txt").write_text("")
    assert find_dataset("kg/toy", explicit=str(explicit), required=("train.txt",)) == explicit


def test_missing_dataset_lists_paths_tried_and_how_to_get(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PADDLE_SUITE_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFound) as err:
        find_dataset("kg/YAGO3-10", required=("train.txt",), how_to_get="Download it from the ConvE repository.")
    message = str(err.value)
    assert str(tmp_path / "env" / "kg" / "YAGO3-10") in message
    assert "data/kg/YAGO3-10" in message and "ConvE repository" in message
    # an explicit path is authoritative: no silent fallback to another copy
    (tmp_path / "bad").mkdir()
    with pytest.raises(DatasetNotFound, match=r"missing train.txt"):
        find_dataset("kg/nations", explicit=str(tmp_path / "bad"), required=("train.txt",))


def test_shared_data_dir_is_found_beside_the_checkout():
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent")
    assert (path / "kg").is_dir()


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_write(target) as handle:
        handle.write("first")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "first"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_directory_replaces_whole_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        open(os.path.join(tmp, "a"), "w").close()
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            open(os.path.join(tmp, "b"), "w").close()
            raise RuntimeError
    assert os.listdir(target) == ["a"]
    with atomic_directory(target) as tmp:
        open(os.path.join(tmp, "c"), "w").close()
    assert os.listdir(target) == ["c"] and sorted(os.listdir(tmp_path)) == ["ckpt"]
