"""The parity helper: seeded inputs, the both-thresholds rule, the reported figures and the report itself.
Runners here are plain callables, so these tests need no TensorFlow."""
import json

import numpy as np
import pytest

from export.errors import ExportError
from export.parity import compare, standard_input_sets, make_inputs, run_parity
from export.signature import TensorInfo

IMAGE = TensorInfo("image", (None, 8, 8, 3), "float32")
DYNAMIC = TensorInfo("image", (None, None, None, 3), "float32")


def test_an_element_fails_only_beyond_both_tolerances():
    ref = np.array([1000.0, 0.0, 0.5], np.float32)
    within_rtol = np.array([1000.005, 0.0, 0.5], np.float32)  # abs 5e-3 > atol, but rel 5e-6 < rtol
    within_atol = np.array([1000.0, 5e-6, 0.5], np.float32)  # rel inf > rtol, but abs 5e-6 < atol
    beyond_both = np.array([1000.0, 2e-5, 0.5], np.float32)
    assert compare(ref, within_rtol)["passed"]
    assert compare(ref, within_atol)["passed"]
    result = compare(ref, beyond_both)
    assert not result["passed"] and result["fails"] == 1
    assert "1 of 3 elements exceed" in result["reason"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_always_fails(bad):
    ref = np.zeros((2, 3), np.float32)
    out = ref.copy()
    out[1, 2] = bad
    result = compare(ref, out, atol=1e9, rtol=1e9)
    assert not result["passed"]
    assert result["nonfinite"] == 1 and result["min_tol"] == np.inf


def test_shape_mismatch_fails():
    result = compare(np.zeros((1, 10)), np.zeros((1, 5)))
    assert not result["passed"]
    assert "shape (1, 5) differs from the reference (1, 10)" == result["reason"]


def test_figures_and_smallest_passing_tolerance():
    ref = np.array([[0.5, 100.0, -2.0, 0.0]])
    out = ref + np.array([[3e-6, 2e-4, -1e-6, 0.0]])
    result = compare(ref, out)
    assert result["max_abs"] == pytest.approx(2e-4)
    assert result["max_rel"] == pytest.approx(6e-6)  # 3e-6 / 0.5
    assert result["min_tol"] == pytest.approx(3e-6)  # max |d| / max(1, |ref|) = max(3e-6, 2e-6, 5e-7, 0)
    t = result["min_tol"]
    assert compare(ref, out, atol=t, rtol=t)["passed"]
    assert not compare(ref, out, atol=0.99 * t, rtol=0.99 * t)["passed"]
    assert result["p99_abs"] == pytest.approx(np.percentile(np.abs(out - ref), 99))


def test_top1_agreement_only_for_classifier_like_outputs():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    out = ref.copy()
    out[0] = [0.9, 0.1]
    assert compare(ref, out)["top1"] == 0.75
    assert compare(np.zeros((4, 1)), np.zeros((4, 1)))["top1"] is None
    assert compare(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 3)))["top1"] is None


def test_inputs_are_seeded_image_like():
    first = make_inputs([IMAGE], batch=7, seed=3)
    np.testing.assert_array_equal(first["image"], make_inputs([IMAGE], batch=7, seed=3)["image"])
    assert not np.array_equal(first["image"], make_inputs([IMAGE], batch=7, seed=4)["image"])
    assert first["image"].shape == (7, 8, 8, 3) and first["image"].dtype == np.float32
    assert 0.0 <= first["image"].min() and first["image"].max() < 1.0
    assert make_inputs([DYNAMIC], batch=2, seed=0, spatial=(40, 52))["image"].shape == (2, 40, 52, 3)
    with pytest.raises(ExportError, match="dynamic dimensions"):
        make_inputs([DYNAMIC], batch=1, seed=0)


def test_standard_input_sets_add_a_second_size_for_dynamic_inputs():
    assert [label for label, _ in standard_input_sets([IMAGE])] == ["batch 1", "batch 7"]
    sets = standard_input_sets([DYNAMIC])
    assert [label for label, _ in sets] == ["batch 1 @ 32x32", "batch 7 @ 32x32", "batch 2 @ 48x64"]
    assert sets[2][1]["image"].shape == (2, 48, 64, 3)


def test_chosen_sizes_apply_to_dynamic_inputs_only():
    sets = standard_input_sets([DYNAMIC], sizes=[(20, 20), (17, 31), (9, 5)])
    assert [label for label, _ in sets] == ["batch 1 @ 20x20", "batch 7 @ 20x20", "batch 2 @ 17x31", "batch 2 @ 9x5"]
    with pytest.raises(ExportError, match="fixed input size"):
        standard_input_sets([IMAGE], sizes=[(20, 20)])


class FakeRunner:
    def __init__(self, name, fn):
        self.name, self.fn, self.detail = name, fn, f"fake {name}"
        self.input_names, self.output_names = ["image"], ["logits"]

    def __call__(self, feeds):
        return self.fn(feeds)


def logits(feeds):
    return {"logits": feeds["image"].reshape(len(feeds["image"]), -1)[:, :5]}


def test_run_parity_reports_every_runtime_and_input_set():
    def crashes(feeds):
        raise RuntimeError("kernel not found\nlong native trace")

    candidates = [
        FakeRunner("exact", logits),
        FakeRunner("noisy", lambda f: {"logits": logits(f)["logits"] + 1e-3}),
        FakeRunner("crashes", crashes),
        FakeRunner("renamed", lambda f: {"probs": logits(f)["logits"]}),
        FakeRunner("reshaped", lambda f: {"logits": logits(f)["logits"][:, :3]}),
    ]
    report = run_parity(FakeRunner("ref", logits), candidates, standard_input_sets([IMAGE]), notes=["ort-cuda skipped"])
    assert not report.passed
    outcome = {(row.runtime, row.inputs): row for row in report.rows}
    assert len(outcome) == 10
    assert outcome["exact", "batch 7"].passed and outcome["exact", "batch 7"].top1 == 1.0
    assert not outcome["noisy", "batch 1"].passed
    assert outcome["noisy", "batch 1"].max_abs == pytest.approx(1e-3, rel=1e-3)
    assert outcome["crashes", "batch 1"].reason == "RuntimeError: kernel not found"
    assert "missing output(s) ['logits']" in outcome["renamed", "batch 1"].reason
    assert "logits: shape (7, 3) differs from the reference (7, 5)" == outcome["reshaped", "batch 7"].reason

    table = report.table()
    assert table.splitlines()[0].split() == ["runtime", "inputs", "max", "abs", "max", "rel", "p99", "abs", "min",
                                             "tol", "top-1", "result"]
    assert "FAIL  RuntimeError: kernel not found" in table
    assert "exact: fake exact" in table and "note: ort-cuda skipped" in table
    assert table.endswith("FAIL: 2 of 10 checks passed")
    as_json = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert as_json["passed"] is False and len(as_json["rows"]) == 10


def test_a_failing_reference_stops_with_one_line():
    def broken(feeds):
        raise ValueError("bad weights")

    with pytest.raises(ExportError, match="reference runtime ref failed on batch 1: bad weights"):
        run_parity(FakeRunner("ref", broken), [FakeRunner("exact", logits)], standard_input_sets([IMAGE]))


def test_no_comparison_is_not_a_pass():
    assert not run_parity(FakeRunner("ref", logits), [], standard_input_sets([IMAGE])).passed
