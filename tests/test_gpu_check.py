"""benchmarks/gpu_check.sh --dry-run on a machine without a GPU: every step's command is printed and checked against
this checkout (zoo subcommands and their options, runtime names, the scripts and their options, the extras); a
command that does not check out fails the dry run. And the report's arithmetic on a made-up work folder."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["venv", "doctor", "train", "export", "resnet50", "resnet50_export", "parity_cuda", "parity_tensorrt",
         "resnet50_parity_cuda", "bench_cuda", "bench_tensorrt", "serve_cuda", "serve_cuda_graph", "report"]
CPU_STAGE = ["train", "export", "resnet50", "resnet50_export", "record", "resnet50_record", "report"]
GPU_STAGE = ["doctor", "parity_cuda", "parity_tensorrt", "resnet50_parity_cuda", "bench_cuda", "bench_tensorrt",
             "serve_cuda", "serve_cuda_graph", "report"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="a bash script")


def dry_run(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(script), "--dry-run", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_dry_run_checks_every_step():
    results = ROOT / "benchmarks" / "results" / "gpu_check.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    result = dry_run(SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _steps(result) == STEPS
    assert result.stdout.count("\n  ok") == len(STEPS) and "FAILED" not in result.stdout
    for command in ("doctor --require cuda", "train cnn_bn", "--fold-bn --onnx --fp16", "parity", "--device tensorrt",
                    "bench", "--io-binding", "--batch 1,8,32", "serve_throughput.py --device cuda", "--cuda-graph"):
        assert command in result.stdout, command
    assert (results.stat().st_mtime_ns if results.exists() else None) == before  # nothing ran, nothing written


def _steps(result: subprocess.CompletedProcess) -> list[str]:
    return [line.split("]")[0][1:] for line in result.stdout.splitlines() if line.startswith("[")]


def test_dry_run_of_the_two_stages(tmp_path):
    """--stage cpu records parity's Keras outputs; --stage gpu (no venv: this Python as it is) replays them
    instead of `zoo parity`; a stage without --work is one error line."""
    cpu = dry_run(SCRIPT, "--stage", "cpu", "--no-venv", "--work", str(tmp_path / "work"))
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    assert _steps(cpu) == CPU_STAGE and "FAILED" not in cpu.stdout
    assert "gpu_check.py record" in cpu.stdout and " doctor " not in cpu.stdout
    gpu = dry_run(SCRIPT, "--stage", "gpu", "--no-venv", "--work", str(tmp_path / "work"))
    assert gpu.returncode == 0, gpu.stdout + gpu.stderr
    assert _steps(gpu) == GPU_STAGE and "FAILED" not in gpu.stdout
    assert "gpu_check.py replay" in gpu.stdout and "zoo parity" not in gpu.stdout and "train" not in gpu.stdout
    assert "--baseline ort-cuda" in gpu.stdout and "--onnx" in gpu.stdout
    alone = dry_run(SCRIPT, "--stage", "gpu")
    assert alone.returncode == 2 and alone.stderr.startswith("error: --stage gpu needs --work DIR")


def test_record_then_replay_without_tensorflow(tmp_path):
    """`record` keeps a tiny export's Keras outputs on parity's inputs; `replay`, in an interpreter where TensorFlow
    cannot be imported, judges ONNX Runtime against them with parity's rule — and fails a tampered recording."""
    import keras
    import numpy as np

    from export.pipeline import export_model

    x = inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Flatten(name="flatten")(x))
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    directory = export_model(tmp_path / "model.keras", tmp_path / "export", onnx=True, savedmodel=False).directory
    recording = tmp_path / "export.reference.npz"
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    subprocess.run([sys.executable, script, "record", str(directory), "--out", str(recording)], check=True,
                   capture_output=True, timeout=300)
    blocked = ("import runpy, sys; sys.modules.update(tensorflow=None, keras=None, tf2onnx=None); "
               f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")

    def replay(reference: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", blocked, script, "replay", str(directory), "--reference",
                               str(reference), "--device", "cpu", "--json", str(tmp_path / "replay.json")],
                              capture_output=True, text=True, timeout=300)

    result = replay(recording)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "replay.json").read_text())
    assert data["passed"] and data["reference"] == "keras" and data["runtimes"]["keras"].startswith("recorded: ")
    assert {(row["runtime"], row["inputs"]) for row in data["rows"]} == {("ort-cpu", "batch 1"), ("ort-cpu", "batch 7")}
    with np.load(recording) as saved:
        arrays = {key: saved[key] for key in saved.files}
    arrays["1/out/logits"] = arrays["1/out/logits"] + 1e-3  # a reference that the export does not match
    np.savez(tmp_path / "tampered.npz", **arrays)
    result = replay(tmp_path / "tampered.npz")
    assert result.returncode == 1 and "FAIL: 1 of 2 checks passed" in result.stdout


def test_dry_run_fails_on_a_command_that_does_not_check_out(tmp_path):
    """A copy of the checkout (links) whose script has a misspelt option and an unknown runtime."""
    for name in ("zoo", "export", "pyproject.toml", ".venv"):
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "benchmarks").mkdir()
    for path in (ROOT / "benchmarks").iterdir():
        if path.suffix == ".py":
            (tmp_path / "benchmarks" / path.name).symlink_to(path)
    broken = tmp_path / "benchmarks" / "gpu_check.sh"
    broken.write_text(SCRIPT.read_text().replace("--io-binding", "--io-bindings", 1)
                      .replace("ort-cuda,ort-cuda-fp16", "ort-cuda,ort-gpu", 1))
    result = dry_run(broken)
    assert result.returncode == 1, result.stdout
    assert "unknown option --io-bindings" in result.stdout
    assert "unknown runtime in --runtimes ort-cuda,ort-gpu" in result.stdout
    assert result.stdout.count("FAILED: the command does not check out") == 1  # both are in the bench_cuda step


def test_report_takes_every_figure_from_the_work_folder(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    work = tmp_path / "work"
    (work / "steps").mkdir(parents=True)
    for name, rc, ms in (("doctor", 0, 5300), ("bench_cuda", 0, 61000)):
        (work / "steps" / f"{name}.cmd").write_text(f"zoo {name}")
        (work / "steps" / f"{name}.rc").write_text(str(rc))
        (work / "steps" / f"{name}.ms").write_text(str(ms))
    rows = [{"runtime": r, "batch": 1, "cold_start_ms": 1.0, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50,
             "throughput": 1e3 / p50} for r, p50 in (("keras", 40.0), ("ort-cuda-fp16", 1.25))]
    (work / "bench_cuda.json").write_text(json.dumps({"rows": rows}))
    (work / "parity_cuda.json").write_text(json.dumps({"passed": True}))
    data = gpu_check.report(work, started=None)
    goals = data["goals"]
    assert goals["resnet50_fp16_cuda_b1_p50_ms"] == {"what": gpu_check.GOALS[0][1], "goal_ms": 1.5,
                                                     "measured_ms": 1.25, "met": True}
    assert goals["resnet50_fp16_tensorrt_b1_p50_ms"]["measured_ms"] is None  # not measured is never "met"
    assert goals["resnet50_fp16_tensorrt_b1_p50_ms"]["met"] is None
    assert goals["parity_cuda"]["passed"] is True and goals["parity_tensorrt"]["passed"] is None
    assert data["steps"]["bench_cuda"] == {"command": "zoo bench_cuda", "exit_code": 0, "wall_s": 61.0,
                                           "output_tail": []}
    assert data["measured"] is True and len(data["figures"]["bench"]) == 2
    assert data["goals"]["wall_time"]["met"] is None  # no start time given: nothing to judge
