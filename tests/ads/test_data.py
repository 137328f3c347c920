"""Readers on the real Criteo samples, feature hashing, error paths, and the Fleet data generator."""
import csv
import gzip
import math
import subprocess
import sys

import numpy as np
import pytest

from paddle_suite.ads import data as ctr

MASK64 = (1 << 64) - 1


def reference_key(text, slot, hash_seed=0):
    """Plain-Python FNV-1a-64 with the slot salt and splitmix64 finaliser (the documented hash)."""

    def mix(z):
        z = (z + 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    state = 0xCBF29CE484222325 ^ mix(mix(hash_seed) ^ (slot + 1))
    for byte in text.encode():
        state = ((state ^ byte) * 0x100000001B3) & MASK64
    return mix(state)


@pytest.fixture
def ctr_dir(shared_data):
    return shared_data / "ctr"


def test_kaggle_csv_sample(ctr_dir):
    path = ctr_dir / "criteo_kaggle_sample.csv"
    batch, reader = ctr.read_ctr(path)
    assert reader.fmt == "criteo_csv"
    assert len(batch) == 200 and reader.num_rows == 200 and reader.num_skipped == 0
    assert batch.dense.shape == (200, 13) and batch.dense.dtype == np.float32
    assert batch.sparse.shape == (200, 26) and batch.sparse.dtype == np.uint64
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert np.array_equal(batch.labels, [int(r[0]) for r in rows])
    # first row: label 0, I2=3, I3=260.0, I5=17668.0, others of I missing; C1=05db9164, C25/C26 empty
    assert batch.labels[0] == 0
    assert batch.dense[0, 1] == pytest.approx(math.log1p(3))
    assert batch.dense[0, 2] == pytest.approx(math.log1p(260))
    assert batch.dense[0, 4] == pytest.approx(math.log1p(17668))
    assert batch.dense[0, 0] == 0.0 and batch.dense[0, 3] == 0.0
    assert int(batch.sparse[0, 0]) == reference_key("05db9164", 0)
    assert int(batch.sparse[0, 25]) == reference_key("", 25)  # missing -> per-slot empty key
    # row 2 has I2 = -1: signed log1p
    assert batch.dense[1, 1] == pytest.approx(-math.log1p(1))
    # every value against an independent per-cell computation
    expect_dense = np.array([[np.sign(float(v)) * math.log1p(abs(float(v))) if v else 0.0 for v in r[1:14]]
                             for r in rows])
    np.testing.assert_allclose(batch.dense, expect_dense, rtol=1e-6)
    expect_keys = np.array([[reference_key(v, j) for j, v in enumerate(r[14:])] for r in rows], dtype=np.uint64)
    assert np.array_equal(batch.sparse, expect_keys)


def test_tsv_gz_crlf_and_no_final_newline_parse_like_csv(ctr_dir, tmp_path):
    csv_path = ctr_dir / "criteo_kaggle_sample.csv"
    lines = csv_path.read_text().splitlines()[1:]
    tsv = "\r\n".join(line.replace(",", "\t") for line in lines)  # CRLF, no trailing newline
    tsv_path = tmp_path / "day_0.gz"
    with gzip.open(tsv_path, "wt", newline="") as handle:
        handle.write(tsv)
    from_csv, _ = ctr.read_ctr(csv_path)
    from_tsv, reader = ctr.read_ctr(tsv_path)
    assert reader.fmt == "criteo_tsv"
    for a, b in zip(from_csv, from_tsv):
        assert np.array_equal(a, b)
    # small blocks: block boundaries must not change anything
    small = ctr.CtrFileReader(tsv_path, block_bytes=777).read_all()
    for a, b in zip(from_csv, small):
        assert np.array_equal(a, b)


def test_slot_sample(ctr_dir):
    path = ctr_dir / "criteo_slot_sample.txt"
    batch, reader = ctr.read_ctr(path)
    assert reader.fmt == "slot" and len(batch) == 80
    tokens = [line.split() for line in path.read_text().splitlines()]
    assert np.array_equal(batch.labels, [int(t[0].split(":")[1]) for t in tokens])
    dense = np.array([[float(x.split(":")[1]) for x in t[1:14]] for t in tokens], dtype=np.float32)
    assert np.array_equal(batch.dense, dense)  # already normalised: passed through
    assert batch.labels[1] == 1 and batch.dense[0, 1] == np.float32(0.00497512437811)
    assert int(batch.sparse[0, 0]) == reference_key("737395", 0)
    assert int(batch.sparse[1, 25]) == reference_key("187951", 25)
    # equal ids in a slot <-> equal keys (slot 8 of lines 1 and 2 is 67180 in both)
    assert batch.sparse[0, 7] == batch.sparse[1, 7]
    assert batch.sparse[0, 7] != ctr.hash_strings(["67180"], 8)[0]  # salted by slot


def test_hash_seed_changes_keys(ctr_dir):
    a, _ = ctr.read_ctr(ctr_dir / "criteo_slot_sample.txt")
    b, _ = ctr.read_ctr(ctr_dir / "criteo_slot_sample.txt", hash_seed=7)
    assert not np.any(a.sparse == b.sparse)
    assert int(b.sparse[0, 0]) == reference_key("737395", 0, hash_seed=7)


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def good_tsv_lines(ctr_dir):
    return [line.replace(",", "\t") for line in (ctr_dir / "criteo_kaggle_sample.csv").read_text().splitlines()[1:6]]


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda line: line + "\textra", "expected 40 tab-separated fields, found 41"),
        (lambda line: "2" + line[1:], "label must be 0 or 1, got '2'"),
        (lambda line: "\t".join("12x" if i == 3 else f for i, f in enumerate(line.split("\t"))),
         "I3 = '12x': not a finite number"),
        (lambda line: "", "blank line"),
    ],
)
def test_malformed_tsv_fails_with_file_line_reason(tmp_path, good_tsv_lines, mutate, reason):
    lines = list(good_tsv_lines)
    lines[2] = mutate(lines[2])
    path = _write(tmp_path, "bad.tsv", lines)
    with pytest.raises(ctr.CtrDataError) as err:
        ctr.read_ctr(path, fmt="criteo_tsv")
    assert f"bad.tsv:3: {reason}" in str(err.value)
    assert "skip_malformed" in str(err.value)


def test_skip_malformed_counts(tmp_path, good_tsv_lines):
    lines = list(good_tsv_lines)
    lines[1] = lines[1] + "\textra"
    lines[3] = "7" + lines[3][1:]
    path = _write(tmp_path, "bad.tsv", lines)
    batch, reader = ctr.read_ctr(path, skip_malformed=True)
    assert len(batch) == 3 and reader.num_skipped == 2
    assert reader.skipped_examples[0].endswith("bad.tsv:2: expected 40 tab-separated fields, found 41")
    assert "bad.tsv:4: label must be 0 or 1" in reader.skipped_examples[1]
    clean, _ = ctr.read_ctr(_write(tmp_path, "clean.tsv", [good_tsv_lines[i] for i in (0, 2, 4)]))
    assert np.array_equal(batch.sparse, clean.sparse) and np.array_equal(batch.dense, clean.dense)


def test_slot_format_errors(tmp_path, ctr_dir):
    lines = (ctr_dir / "criteo_slot_sample.txt").read_text().splitlines()[:4]
    bad_name = list(lines)
    bad_name[1] = bad_name[1].replace(" 5:", " 6:", 1)
    with pytest.raises(ctr.CtrDataError, match=r"bad.txt:2: slot names"):
        ctr.read_ctr(_write(tmp_path, "bad.txt", bad_name))
    empty = list(lines)
    empty[3] = empty[3].rsplit(" ", 1)[0] + " 26:"  # last token without its id
    with pytest.raises(ctr.CtrDataError, match=r"bad2.txt:4: empty value"):
        ctr.read_ctr(_write(tmp_path, "bad2.txt", empty))


def test_csv_header_checked_and_unknown_format(tmp_path, ctr_dir):
    lines = (ctr_dir / "criteo_kaggle_sample.csv").read_text().splitlines()
    path = _write(tmp_path, "h.csv", ["label,I1"] + lines[1:3])
    with pytest.raises(ctr.CtrDataError, match="h.csv:1: expected the CSV header"):
        ctr.read_ctr(path, fmt="criteo_csv")
    with pytest.raises(ctr.CtrDataError, match="x.txt:1: cannot tell the CTR format"):
        ctr.read_ctr(_write(tmp_path, "x.txt", ["hello world"]))


def test_fixed_size_batches(ctr_dir):
    reader = ctr.CtrFileReader(ctr_dir / "criteo_kaggle_sample.csv", block_bytes=3000)
    sizes = [len(b) for b in reader.batches(64)]
    assert sizes == [64, 64, 64, 8]
    assert [len(b) for b in reader.batches(64, drop_last=True)] == [64, 64, 64]


def test_text_formatting_helpers():
    values = np.array([0, 7, 10, 12345678901234567890, 2**64 - 1], dtype=np.uint64)
    text = ctr.assemble_lines([ctr.decimal_field(values), ctr.fixed_field([-1.5, 0.0, 2.25, 1e-7, 3.0])], ord(","))
    assert text.decode().splitlines() == [
        "0,-1.500000", "7,0.000000", "10,2.250000", "12345678901234567890,0.000000",
        f"{2**64 - 1},3.000000"]


def test_multislot_pipe_matches_reader(ctr_dir):
    """The InMemoryDataset pipe command writes the reader's values in MultiSlot text."""
    path = ctr_dir / "criteo_kaggle_sample.csv"
    out = subprocess.run([sys.executable, "-m", "paddle_suite.ads.data", "--pipe"], stdin=open(path, "rb"),
                         capture_output=True, check=True, timeout=120).stdout.decode().splitlines()
    batch, _ = ctr.read_ctr(path)
    assert len(out) == 200
    tokens = np.array([line.split() for line in out])
    assert tokens.shape == (200, 3 + 13 + 2 * 26)
    assert np.array_equal(tokens[:, 1].astype(int), batch.labels)
    assert tokens[0, 2] == "13"
    np.testing.assert_allclose(tokens[:, 3:16].astype(float), batch.dense, atol=1e-6)
    assert set(tokens[:, 16::2].ravel()) == {"1"}  # one value per categorical slot
    assert np.array_equal(tokens[:, 17::2].astype(np.uint64), batch.sparse)


def test_generate_sample_per_line_contract(ctr_dir):
    generator = ctr.make_data_generator()
    from paddle.distributed import fleet

    assert isinstance(generator, fleet.MultiSlotDataGenerator)
    assert isinstance(generator, ctr.CtrSlotDataGenerator)
    line = (ctr_dir / "criteo_slot_sample.txt").read_text().splitlines()[1]
    samples = list(generator.generate_sample(line)())
    assert len(samples) == 1
    names = [name for name, _ in samples[0]]
    assert names == ctr.USE_VAR_SLOTS
    assert samples[0][0][1] == [1]
    assert samples[0][27][1] == [reference_key("187951", 25)]
    text = generator._gen_str(samples[0]).split()
    assert text[:2] == ["1", "1"] and text[2] == "13"


@pytest.mark.slow
def test_inmemory_dataset_loads_both_formats(ctr_dir):
    """Fleet's InMemoryDataset accepts the generator's output with the documented slot order."""
    code = f"""
import sys, paddle_suite, paddle
paddle.enable_static()
click = paddle.static.data("click", [-1, 1], "int64")
dense = paddle.static.data("dense_feature", [-1, 13], "float32")
sparse = [paddle.static.data(f"C{{i}}", [-1, 1], "int64", lod_level=1) for i in range(1, 27)]
dataset = paddle.distributed.InMemoryDataset()
dataset.init(batch_size=16, thread_num=1, use_var=[click, dense] + sparse,
             pipe_command=sys.executable + " -m paddle_suite.ads.data --pipe")
dataset.set_filelist([{str(ctr_dir / "criteo_slot_sample.txt")!r}, {str(ctr_dir / "criteo_kaggle_sample.csv")!r}])
dataset.load_into_memory()
print("SIZE", dataset.get_memory_data_size())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SIZE 280" in out.stdout


def test_slot_trailing_spaces_and_check_cli(tmp_path, ctr_dir, capsys):
    lines = (ctr_dir / "criteo_slot_sample.txt").read_text().splitlines()[:3]
    padded = _write(tmp_path, "pad.txt", [line + "  " for line in lines])
    clean = _write(tmp_path, "clean.txt", lines)
    for a, b in zip(ctr.read_ctr(padded)[0], ctr.read_ctr(clean)[0]):
        assert np.array_equal(a, b)
    ctr.main(["--check", str(padded)])
    assert "format slot, 3 rows, 0 skipped" in capsys.readouterr().out


def test_empty_and_example_free_files_are_errors(tmp_path, ctr_dir, good_tsv_lines):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ctr.DataError, match=r"empty.txt is empty"):
        ctr.read_ctr(empty)
    with pytest.raises(ctr.DataError, match=r"empty.txt is empty"):
        ctr.read_ctr(empty, fmt="criteo_tsv")
    gz = tmp_path / "empty.txt.gz"
    with gzip.open(gz, "wb"):
        pass
    with pytest.raises(ctr.DataError, match=r"empty.txt.gz is empty"):
        ctr.read_ctr(gz)
    header = _write(tmp_path, "header.csv", [ctr.CSV_HEADER])
    with pytest.raises(ctr.DataError, match=r"no examples in .*header.csv: it has only the CSV header"):
        ctr.read_ctr(header)
    skipped_all = _write(tmp_path, "all_bad.tsv", ["7" + line[1:] for line in good_tsv_lines])
    with pytest.raises(ctr.DataError, match=r"no examples in .*all_bad.tsv: all 5 line\(s\) are malformed, "
                                            r"e.g. .*all_bad.tsv:1: label must be 0 or 1"):
        ctr.read_ctr(skipped_all, skip_malformed=True)


def test_files_reader_counts_skipped_lines_per_file(tmp_path, good_tsv_lines):
    lines = list(good_tsv_lines)
    lines[1] = lines[1] + "\textra"
    bad = _write(tmp_path, "bad.tsv", lines)
    clean = _write(tmp_path, "clean.tsv", good_tsv_lines)
    stream = ctr.CtrFilesReader([str(clean), str(bad)], skip_malformed=True)
    sizes = [len(b) for b in stream.batches(3)]
    assert sizes == [3, 2, 3, 1]  # batches do not span files
    assert stream.skipped_per_file == {str(clean): 0, str(bad): 1}
    assert stream.num_skipped == 1 and stream.num_rows == 9
    with pytest.raises(ctr.DataError, match=r"bad.tsv:2: expected 40 tab-separated fields"):
        list(ctr.CtrFilesReader([str(clean), str(bad)]).batches(3))


def _pipe(args, stdin, status_dir=None):
    command = [sys.executable, "-m", "paddle_suite.ads.data", "--pipe", *args]
    if status_dir:
        command += ["--status-dir", str(status_dir)]
    return subprocess.run(command, stdin=stdin, capture_output=True, timeout=120)


def test_pipe_names_the_file_and_line_and_reports_status(tmp_path, good_tsv_lines):
    lines = list(good_tsv_lines)
    lines[3] = "7" + lines[3][1:]
    bad = _write(tmp_path, "bad.tsv", lines)
    status = tmp_path / "status"
    with open(bad, "rb") as stdin:  # as Paddle runs it: ( CMD ) < "FILE"
        out = _pipe([], stdin, status)
    assert out.returncode == 1
    assert out.stderr.decode().strip().splitlines()[-1] == (
        f"error: {bad}:4: label must be 0 or 1, got '7' (format criteo_tsv). Fix or remove the line, or set "
        "DataLoader.skip_malformed=true to count and skip malformed lines.")
    with pytest.raises(ctr.DataError, match=rf"{bad}:4: label must be 0 or 1"):
        ctr.collect_pipe_status(status, [bad])
    assert not list(status.iterdir())  # consumed
    # a pipe (cat FILE | ...) has no file behind stdin: --source names it
    cat = subprocess.Popen(["cat", str(bad)], stdout=subprocess.PIPE)
    out = _pipe(["--source", "data/bad.tsv"], cat.stdout)
    cat.wait()
    assert out.returncode == 1 and "error: data/bad.tsv:4: label must be 0 or 1" in out.stderr.decode()
    # skipping: counted per file and reported to the trainer
    with open(bad, "rb") as stdin:
        out = _pipe(["--skip-malformed"], stdin, status)
    assert out.returncode == 0 and len(out.stdout.decode().splitlines()) == 4
    assert ctr.collect_pipe_status(status, [bad]) == {"rows": 4, "skipped": 1, "skipped_per_file": {str(bad): 1}}
    with pytest.raises(ctr.DataError, match=r"clean.tsv: the dataset pipe command wrote no status"):
        ctr.collect_pipe_status(status, [tmp_path / "clean.tsv"])


def test_pipe_empty_and_header_only_inputs_fail(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    header = _write(tmp_path, "header.csv", [ctr.CSV_HEADER])
    for path, message in ((empty, f"{empty} is empty"), (header, f"no examples in {header}")):
        with open(path, "rb") as stdin:
            out = _pipe([], stdin)
        assert out.returncode == 1 and f"error: {message}" in out.stderr.decode()
        assert out.stdout == b""


@pytest.mark.slow
def test_inmemory_dataset_pipe_failure_names_the_gz_file(tmp_path, good_tsv_lines):
    """Paddle's dataset ignores the pipe's exit status and loads nothing from the failed file;
    the status records name the file (here .gz: stdin is zcat's pipe) so the trainer can fail."""
    lines = list(good_tsv_lines)
    lines[3] = "7" + lines[3][1:]
    bad = tmp_path / "bad.tsv.gz"
    bad.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    good = _write(tmp_path, "good.tsv", good_tsv_lines)
    status = tmp_path / "status"
    code = f"""
import sys, paddle_suite, paddle
from paddle_suite.ads import data
paddle.enable_static()
click = paddle.static.data("click", [-1, 1], "int64")
dense = paddle.static.data("dense_feature", [-1, 13], "float32")
sparse = [paddle.static.data(f"C{{i}}", [-1, 1], "int64", lod_level=1) for i in range(1, 27)]
dataset = paddle.distributed.InMemoryDataset()
dataset.init(batch_size=4, thread_num=1, use_var=[click, dense] + sparse,
             pipe_command=sys.executable + " -m paddle_suite.ads.data --pipe --status-dir {status}")
files = [{str(good)!r}, {str(bad)!r}]
dataset.set_filelist(files)
dataset.load_into_memory()
print("SIZE", dataset.get_memory_data_size())
data.collect_pipe_status({str(status)!r}, files)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert "SIZE 5" in out.stdout  # the bad file loaded nothing, and Paddle went on
    assert out.returncode == 1
    assert f"CtrDataError: {bad}:4: label must be 0 or 1" in out.stderr
