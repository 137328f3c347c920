import logging

import pytest

from paddle_suite.engine.run import METRICS_FILE, MetricsSink, read_metrics


def test_a_record_cut_off_by_a_kill_is_dropped_before_the_next_one(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="paddle_suite")
    sink = MetricsSink(str(tmp_path))
    sink.log("train", {"loss": 1.5}, step=10)
    sink.close()
    path = tmp_path / METRICS_FILE
    with open(path, "a") as handle:  # what a kill in the middle of a write leaves
        handle.write('{"step": 20, "prefix": "tra')
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [10]  # an unfinished last line is not read

    sink = MetricsSink(str(tmp_path))  # the resumed run
    assert "dropping its last 27 bytes" in caplog.text
    sink.log("train", {"loss": 1.25}, step=20)
    sink.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path), "train")] == [(10, 1.5), (20, 1.25)]
    assert path.read_text().count("\n") == 2


def test_a_file_of_one_cut_off_line_is_emptied(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1' + " " * 70000)  # longer than one read block
    MetricsSink(str(tmp_path)).close()
    assert (tmp_path / METRICS_FILE).read_text() == ""


def test_a_damaged_line_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "prefix": "train"}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record"):
        read_metrics(str(tmp_path))
