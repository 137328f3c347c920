"""Shared test data: generator output with a planted model, split into train and test files."""


def planted_split(tmp_path, rows, test_rows=8000, vocab=50000, seed=3):
    """Write ``train.txt`` / ``test.txt`` (disjoint rows, same planted model); return paths and meta."""
    from paddle_suite.ads.generator import CtrSpec, generate

    spec = CtrSpec(rows + test_rows, vocab=vocab, zipf=1.1, seed=seed, weight_std=1.0)
    meta = generate(spec, str(tmp_path / "all.txt"), progress=False)
    lines = (tmp_path / "all.txt").read_text().splitlines(keepends=True)
    (tmp_path / "train.txt").write_text("".join(lines[:rows]))
    (tmp_path / "test.txt").write_text("".join(lines[rows:]))
    return str(tmp_path / "train.txt"), str(tmp_path / "test.txt"), meta
