"""`zoo bench` on a tiny model: every runtime × batch in the table and the JSON with positive figures, the
baseline measured in the same run, and bad arguments as one-line errors. Also the shared timing helpers."""
import json
import subprocess
import sys

import keras
import pytest

from export.ort_session import cuda_available
from export.pipeline import export_model
from export.timing import paired_ratios, summarize, time_interleaved
from tests.helpers import assert_user_error, invoke

RUNTIMES = ("keras", "keras-folded", "savedmodel", "ort-cpu", "ort-cpu-fp16", "tflite")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    x = inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    keras.Model(inputs, keras.layers.Dense(3, name="logits")(x)).save(tmp / "model.keras")
    return export_model(tmp / "model.keras", tmp / "export", onnx=True, tflite=True, fp16=True).directory


def test_bench_times_every_runtime_at_every_batch(export_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = invoke("bench", export_dir, "--batch", "1,3", "--runs", 3, "--warmup", 1, "--device", "cpu",
                    "--json", out)
    assert result.exit_code == 0, result.output
    table = [line.split() for line in result.output.splitlines()]
    for runtime in RUNTIMES:
        for batch in ("1", "3"):
            assert any(row[:2] == [runtime, batch] for row in table if len(row) > 2), (runtime, batch)
    data = json.loads(out.read_text())
    assert data["baseline"] == "keras" and data["input_shape"] == "8×8×1"
    assert {(r["runtime"], r["batch"]) for r in data["rows"]} == {(n, b) for n in RUNTIMES for b in (1, 3)}
    for row in data["rows"]:
        for key in ("cold_start_ms", "p50_ms", "p90_ms", "p99_ms", "throughput", "ratio"):
            assert row[key] > 0, (row["runtime"], key)
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput"] == pytest.approx(row["batch"] * 1e3 / row["p50_ms"])
        if row["runtime"] == "keras":
            assert row["ratio"] == 1.0
    assert "CPUExecutionProvider" in data["runtimes"]["ort-cpu"]
    assert "float16 weights" in data["runtimes"]["ort-cpu-fp16"]
    assert "ort-cuda, ort-cuda-fp16 skipped: not requested (device=cpu)" in data["notes"]


def test_bench_a_subset_still_measures_the_baseline(export_dir):
    result = invoke("bench", export_dir, "--runtimes", "ort-cpu", "--batch", "2", "--runs", 2, "--warmup", 0,
                    "--device", "cpu", "--io-binding")
    assert result.exit_code == 0, result.output
    assert "keras measured as the baseline" in result.output
    assert any(line.startswith("ort-cpu ") for line in result.output.splitlines())
    assert not any(line.startswith("tflite ") for line in result.output.splitlines())


@pytest.mark.parametrize("args, fragments", [
    (("--runtimes", "keras,pytorch"), ("unknown runtime(s) pytorch", "ort-cpu-fp16", "keras-folded")),
    (("--runtimes", "onnx"), ("unknown runtime(s) onnx", "onnx is now ort-cpu or ort-cuda")),
    (("--runtimes", "ort-cuda", "--device", "cpu"), ("ort-cuda cannot run with --device cpu",)),
    (("--batch", "1,x"), ("--batch '1,x'", "positive integers")),
    (("--batch", "0"), ("--batch '0'",)),
    (("--size", "32"), ("--size '32' is not HxW",)),
    (("--size", "16x16"), ("fixed input size",)),
    (("--runs", "0"), ("--runs must be ≥ 1",)),
])
def test_bad_arguments_are_one_line_errors(export_dir, args, fragments):
    assert_user_error(invoke("bench", export_dir, *args), *fragments)


def test_missing_artifact_or_cuda_is_one_line(export_dir, tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "model.keras").write_bytes((export_dir / "model.keras").read_bytes())
    (tmp_path / "only" / "model.onnx").write_bytes((export_dir / "model.onnx").read_bytes())
    assert_user_error(invoke("bench", tmp_path / "only", "--runtimes", "tflite"), "model.tflite", "--tflite")
    if not cuda_available():
        assert_user_error(invoke("bench", export_dir, "--device", "cuda"), "CUDA execution provider is not usable")


def test_interleaved_timing_rotates_the_order():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = time_interleaved(calls, runs=3, warmup=1)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}
    stats = summarize([1.0, 2.0, 3.0, 4.0])
    assert stats["p50"] == 2.5 and stats["min"] == 1.0 and stats["runs"] == 4
    ratios = paired_ratios({"base": [1.0, 2.0], "x": [2.0, 2.0]}, "base")
    assert list(ratios) == ["x"] and ratios["x"]["p50"] == 1.5


def test_another_baseline_needs_no_keras_model(export_dir, tmp_path):
    """--baseline ort-cpu: fp16 against fp32 ONNX, in a folder holding only the ONNX files; in a fresh interpreter
    where TensorFlow and Keras cannot be imported (a serving-only machine)."""
    (tmp_path / "onnx").mkdir()
    for name in ("model.onnx", "model_fp16.onnx"):
        (tmp_path / "onnx" / name).write_bytes((export_dir / name).read_bytes())
    out = tmp_path / "bench.json"
    blocked = "import sys; sys.modules.update(tensorflow=None, keras=None, tf2onnx=None); from zoo.cli import app; app()"
    result = subprocess.run([sys.executable, "-c", blocked, "bench", str(tmp_path / "onnx"), "--runtimes",
                             "ort-cpu-fp16", "--baseline", "ort-cpu", "--batch", "2", "--runs", "2", "--warmup", "0",
                             "--device", "cpu", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["baseline"] == "ort-cpu"
    assert [(r["runtime"], r["ratio"] == 1.0) for r in data["rows"]] == [("ort-cpu", True), ("ort-cpu-fp16", False)]
    assert "ort-cpu measured as the baseline although not requested" in data["notes"]


def test_a_baseline_the_export_lacks_is_one_line(export_dir, tmp_path):
    assert_user_error(invoke("bench", export_dir, "--baseline", "ort-cpu-int8", "--device", "cpu"),
                      "no model_int8.onnx", "baseline ort-cpu-int8", "--int8")
    assert_user_error(invoke("bench", export_dir, "--baseline", "pytorch"), "unknown runtime 'pytorch'")
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes((export_dir / "model.onnx").read_bytes())
    assert_user_error(invoke("bench", tmp_path / "onnx", "--runtimes", "ort-cpu"), "no model.keras",
                      "--baseline")
