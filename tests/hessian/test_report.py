"""spectrum_report writes a complete report whose numbers agree with the exact Hessian."""
import csv
import json

import numpy as np

from paddle_suite.hessian.hvp import HVPOperator
from paddle_suite.hessian.layers import make_double_differentiable
from paddle_suite.hessian.losses import SoftmaxCrossEntropy
from paddle_suite.hessian.report import spectrum_report

from .nets import classification_batch, tiny_cnn


def test_report_files_and_numbers(tmp_path):
    model = tiny_cnn(seed=10)
    batches = [classification_batch([1, 8, 8], 8, seed=10), classification_batch([1, 8, 8], 5, seed=11)]
    dense = HVPOperator(make_double_differentiable(model), SoftmaxCrossEntropy(), batches, dtype="float64").dense()
    truth = np.linalg.eigvalsh(dense)[::-1]
    out = tmp_path / "spectrum"
    report = spectrum_report(model, batches, out, top_k=20, dtype="float64", trace_products=30, density_steps=40)
    assert sorted(p.name for p in out.iterdir()) == ["density.png", "eigenvalues.csv", "rank_spectrum.png",
                                                     "spectrum.json"]
    written = json.loads((out / "spectrum.json").read_text())
    assert written["settings"]["parameters"] == 85 and written["settings"]["samples"] == 13
    assert np.max(np.abs(np.array(written["eigenvalues"]) - truth[:20]) / np.abs(truth[:20])) < 1e-4
    low, high = written["trace"]["ci95"]
    assert low <= np.trace(dense) <= high
    rows = list(csv.DictReader((out / "eigenvalues.csv").open()))
    assert len(rows) == 20 and float(rows[0]["eigenvalue"]) == report["eigenvalues"][0]
    assert "is_power_law" in written["power_law"]
