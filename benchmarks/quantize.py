"""Int8 after folding (`zoo export --fold-bn --onnx --int8`): speed against the folded fp32 ONNX, and accuracy on
real data, in one run, written to one results JSON with the CPU's instruction sets.

Speed (`--part speed`): keras.applications ResNet50 and MobileNetV2 at 224² (weights=None, biased convs, random
moderate BN statistics — benchmarks/applications.py), exported by `export_model` with --fold-bn --onnx --int8
(calibrated on 16 random images; the gate is off here: these nets are untrained, only speed is measured). fp32 and
int8 sessions (ONNX Runtime CPU, the project's session factory, thread spinning off) run interleaved at batch 1 and
32; the speed-up is the ratio of p50s measured in the same rounds. Goals: ≥ 3.0× on ResNet50, ≥ 2× on MobileNetV2.

Accuracy (`--part accuracy`, needs ../shared/data, benchmarks only): `zoo train` then `zoo export --int8` through
the CLI, calibrated on the training split, gated on the test split:
  cnn_bn   on the MNIST subset (17,435 train / 10,000 test)       goal: drop ≤ 0.5 pt, agreement ≥ 99 %
  resnet20 on the CIFAR-10 subset (5,085 train / 1,017 test)     same goals
The figures are the export's own gate (int8_report.json), plus the file size ratio, for each calibration choice
(minmax, entropy, percentile, --keep-float auto, bias correction and their combinations, and minmax with the gate
opened so its figures are recorded even when it fails) on the same trained run.

Depthwise (`--part depthwise`): zoo's mobilenet_v2 on the CIFAR-10 subset, per-channel against per-tensor weight
scales (`--int8-weights`), each with minmax and with percentile + bias correction — the measurement behind
docs/int8.md's note on cross-layer equalisation.

Shifted domain (`--part shift`): calibration after `zoo recalibrate-bn` against plain PTQ, cnn_bn on MNIST+contrast
and MNIST+invert (see `shift`).

Denoising (`--part denoise`): `zoo train dncnn --steps 300`, then `zoo export --int8` calibrated on noisy crops of
the training photos and gated on the PSNR of noisy crops of the held-out photos. Goal: PSNR drop ≤ 0.3 dB.

    python benchmarks/quantize.py                 # every part (~20 minutes here)
    python benchmarks/quantize.py --part speed

Writes benchmarks/results/quantize.json (each part replaces its own key).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path, quiet TensorFlow
from _common import ROOT, environment

import numpy as np  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "quantize.json"
DATA = ROOT.parent / "shared" / "data"
SPEED_MODELS = ("ResNet50", "MobileNetV2")
GOALS = {"ResNet50": 3.0, "MobileNetV2": 2.0}


def speed(size: int, runs: dict[int, int]) -> dict:
    from _common import build_application as build

    from export.int8 import Int8Settings
    from export.ort_session import make_session
    from export.pipeline import export_model
    from export.timing import paired_ratios, summarize, time_interleaved

    rng = np.random.default_rng(0)
    results = {}
    for name in SPEED_MODELS:
        with tempfile.TemporaryDirectory(prefix="zoo-int8-speed-") as scratch:
            scratch = Path(scratch)
            build(name, size, conv_bias=True).save(scratch / "m.keras")
            settings = Int8Settings(calibration=rng.random((16, size, size, 3), np.float32),
                                    evaluation=rng.random((8, size, size, 3), np.float32), min_agreement=0.0,
                                    max_rel_error=float("inf"), calibration_source="16 random images",
                                    evaluation_source="8 random images")
            start = time.perf_counter()
            export_model(scratch / "m.keras", scratch / "export", fold_bn=True, onnx=True, savedmodel=False,
                         int8=True, int8_settings=settings)
            seconds = time.perf_counter() - start
            report = json.loads((scratch / "export" / "int8_report.json").read_text())
            sessions = {kind: make_session(scratch / "export" / file, device="cpu", allow_spinning=False).session
                        for kind, file in (("fp32", "model.onnx"), ("int8", "model_int8.onnx"))}
            sizes = {kind: (scratch / "export" / file).stat().st_size
                     for kind, file in (("fp32", "model.onnx"), ("int8", "model_int8.onnx"))}
            row = {"export_seconds": seconds, "quantized_ops": report["quantized_nodes"],
                   "file_mb": {k: v / 2**20 for k, v in sizes.items()}, "size_ratio": sizes["int8"] / sizes["fp32"],
                   "agreement_random_inputs": report["gate"].get("agreement"), "batches": {}}
            for batch, count in runs.items():
                x = rng.random((batch, size, size, 3), np.float32)
                calls = {kind: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for kind, s in sessions.items()}
                times = time_interleaved(calls, runs=count, warmup=3)
                ratio = paired_ratios(times, "int8")["fp32"]  # fp32 time / int8 time: the speed-up
                row["batches"][str(batch)] = {"fp32_ms": summarize(times["fp32"]), "int8_ms": summarize(times["int8"]),
                                              "speedup_p50": summarize(times["fp32"])["p50"] / summarize(times["int8"])["p50"],
                                              "speedup_rounds": ratio}
                print(f"{name} b{batch}: fp32 {row['batches'][str(batch)]['fp32_ms']['p50']:.1f} ms, int8 "
                      f"{row['batches'][str(batch)]['int8_ms']['p50']:.1f} ms, "
                      f"{row['batches'][str(batch)]['speedup_p50']:.2f}×", flush=True)
            row["goal_speedup_at_least"] = GOALS[name]
            row["goal_met"] = all(b["speedup_p50"] >= GOALS[name] for b in row["batches"].values())
            results[name] = row
    return {"size": size, "models": results, "method": "interleaved rounds (export/timing.py), spinning off, "
                                                       "ORT default threads", "environment": environment()}


VARIANTS = {"minmax": [], "entropy": ["--calib-method", "entropy"], "percentile": ["--calib-method", "percentile"],
            "minmax, --keep-float auto": ["--keep-float", "auto"],
            "minmax, bias correction": ["--int8-bias-correction"],
            "percentile, bias correction": ["--calib-method", "percentile", "--int8-bias-correction"],
            "minmax, bias correction, --keep-float auto": ["--int8-bias-correction", "--keep-float", "auto"],
            # the gate opened, so the file is written and its figures recorded whatever they are
            "minmax, gate open": ["--int8-min-agreement", "0", "--int8-max-drop", "100"]}


GATE_OPEN = ["--int8-min-agreement", "0", "--int8-max-drop", "100"]
# the depthwise case: per-tensor weight scales are what cross-layer equalisation was made for (one scale for a
# depthwise kernel whose channels' ranges differ by orders of magnitude); per-channel scales are zoo's default
DEPTHWISE_VARIANTS = {"per-channel minmax": [], "per-tensor minmax": ["--int8-weights", "per-tensor"],
                      "per-channel percentile, bias correction": ["--calib-method", "percentile",
                                                                  "--int8-bias-correction"],
                      "per-tensor percentile, bias correction": ["--int8-weights", "per-tensor", "--calib-method",
                                                                 "percentile", "--int8-bias-correction"],
                      "per-channel minmax, --keep-float auto": ["--keep-float", "auto"],
                      "per-channel percentile, bias correction, --keep-float auto": [
                          "--calib-method", "percentile", "--int8-bias-correction", "--keep-float", "auto"],
                      "per-channel minmax, gate open": GATE_OPEN,
                      "per-tensor minmax, gate open": ["--int8-weights", "per-tensor", *GATE_OPEN]}
CASES = {"cnn_bn": "mnist_fulltest_partialtrain.npz", "resnet20": "cifar10_subset.npz",
         "mobilenet_v2": "cifar10_subset.npz"}


def accuracy(epochs: dict[str, int], variants: dict[str, list[str]] = VARIANTS) -> dict:
    """`zoo train MODEL --epochs N` on its real-data subset for each model of `epochs`, then one `zoo export
    --int8` per variant of the same trained run."""
    zoo = str(Path(sys.executable).with_name("zoo"))
    cases = {model: f"npz:{DATA / CASES[model]}" for model in epochs}
    results = {}
    with tempfile.TemporaryDirectory(prefix="zoo-int8-acc-") as scratch:
        for model, dataset in cases.items():
            run = Path(scratch) / model
            start = time.perf_counter()
            subprocess.run([zoo, "train", model, "--dataset", dataset, "--epochs", str(epochs[model]), "--out",
                            str(run)], check=True, capture_output=True)
            row = {"dataset": dataset.replace(str(ROOT.parent), ".."), "epochs": epochs[model],
                   "train_seconds": time.perf_counter() - start,
                   "goal": "accuracy drop ≤ 0.5 pt and top-1 agreement ≥ 99 %", "variants": {}}
            for variant, flags in variants.items():  # the same trained run, exported once per calibration choice
                export = Path(scratch) / f"{model}-{len(row['variants'])}"
                start = time.perf_counter()
                done = subprocess.run([zoo, "export", str(run), "--fold-bn", "--onnx", "--int8", "--no-savedmodel",
                                       "--no-parity", "--out", str(export), *flags], capture_output=True, text=True)
                report = json.loads((export / "int8_report.json").read_text()) if done.returncode == 0 else None
                row["variants"][variant] = {
                    "flags": flags, "export_seconds": time.perf_counter() - start, "exit_code": done.returncode,
                    "error": [l for l in done.stderr.splitlines() if l.startswith("error:")],
                    "gate": report["gate"] if report else None,
                    "kept_float": list(report["kept_float"]) if report else None,
                    "notes": report["notes"] if report else None,
                    "size_ratio": ((export / "model_int8.onnx").stat().st_size / (export / "model.onnx").stat().st_size
                                   if report else None),
                    "goal_met": bool(report and report["gate"]["passed"]),
                }
                print(model, variant, done.returncode, json.dumps(row["variants"][variant]["gate"]),
                      row["variants"][variant]["error"], flush=True)
            results[model] = row
    return {"models": results, "environment": environment()}


def denoise(steps: int) -> dict:
    """DnCNN: `zoo train dncnn` (bundled photos, σ=25), then `zoo export --int8`: calibrated on noisy crops of the
    training photos, gated on the PSNR of noisy crops of the held-out ones (goal: drop ≤ 0.3 dB)."""
    zoo = str(Path(sys.executable).with_name("zoo"))
    with tempfile.TemporaryDirectory(prefix="zoo-int8-dncnn-") as scratch:
        run = Path(scratch) / "dncnn"
        start = time.perf_counter()
        subprocess.run([zoo, "train", "dncnn", "--steps", str(steps), "--out", str(run)], check=True,
                       capture_output=True)
        trained = time.perf_counter() - start
        done = subprocess.run([zoo, "export", str(run), "--fold-bn", "--onnx", "--int8", "--no-savedmodel",
                               "--calib-images", "256"], capture_output=True, text=True)
        export = run / "export"
        report = json.loads((export / "int8_report.json").read_text()) if done.returncode == 0 else None
        gate = report["gate"] if report else None
        result = {"steps": steps, "train_seconds": trained, "export_exit_code": done.returncode,
                  "export_error": [l for l in done.stderr.splitlines() if l.startswith("error:")],
                  "calibration": report["calibration_source"] if report else None, "gate": gate,
                  "size_ratio": ((export / "model_int8.onnx").stat().st_size / (export / "model.onnx").stat().st_size
                                 if report else None),
                  "goal": "PSNR drop ≤ 0.3 dB", "goal_met": bool(gate and gate["passed"])}
    print("dncnn", json.dumps(gate), flush=True)
    return {"dncnn": result, "environment": environment()}


def shift(shifts: tuple[str, ...] = ("contrast", "invert")) -> dict:
    """Calibration after `zoo recalibrate-bn` on a shifted domain, against plain PTQ on the same data: cnn_bn trained
    on the MNIST subset, evaluated on MNIST+SHIFT. Plain: the trained model quantized with calibration images from
    the shifted training split. AdaBN: `zoo recalibrate-bn` on the shifted training split first, then the same
    quantization. The gate is opened (min agreement 0, max drop 100) so both files are written and their figures
    recorded; the comparison is int8 accuracy on the shifted test split."""
    zoo = str(Path(sys.executable).with_name("zoo"))
    mnist = f"npz:{DATA / 'mnist_fulltest_partialtrain.npz'}"
    rows = {}
    with tempfile.TemporaryDirectory(prefix="zoo-int8-shift-") as scratch:
        run = Path(scratch) / "cnn_bn"
        subprocess.run([zoo, "train", "cnn_bn", "--dataset", mnist, "--epochs", "3", "--out", str(run)], check=True,
                       capture_output=True)
        for name in shifts:
            target = f"{mnist}+{name}"
            adabn = Path(scratch) / f"adabn_{name}.keras"
            subprocess.run([zoo, "recalibrate-bn", str(run / "model.keras"), "--dataset", target, "--out",
                            str(adabn)], check=True, capture_output=True)
            row = {}
            for label, source in (("plain PTQ", run), ("recalibrate-bn, then PTQ", adabn)):
                export = Path(scratch) / f"{name}-{len(row)}"
                done = subprocess.run([zoo, "export", str(source), "--fold-bn", "--onnx", "--int8", "--no-savedmodel",
                                       "--no-parity", "--calib-dataset", target, "--int8-min-agreement", "0",
                                       "--int8-max-drop", "100", "--out", str(export)], capture_output=True, text=True)
                gate = json.loads((export / "int8_report.json").read_text())["gate"] if done.returncode == 0 else None
                row[label] = {"exit_code": done.returncode, "gate": gate,
                              "error": [l for l in done.stderr.splitlines() if l.startswith("error:")]}
                print(name, label, json.dumps(gate), flush=True)
            rows[name] = row
    return {"shifts": rows, "environment": environment()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("speed", "accuracy", "depthwise", "denoise", "shift", "all"),
                        default="all")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--resnet20-epochs", type=int, default=8, help="resnet20's training epochs (accuracy part)")
    parser.add_argument("--mobilenet-epochs", type=int, default=15, help="mobilenet_v2's training epochs (depthwise "
                        "part)")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.part in ("speed", "all"):
        results["speed"] = speed(args.size, {1: 40, 32: 8})
        results["speed"]["command"] = f"python benchmarks/quantize.py --part speed --size {args.size}"
    if args.part in ("accuracy", "all"):
        if not DATA.is_dir():
            raise SystemExit(f"--part accuracy needs {DATA} (real MNIST and CIFAR-10 subsets)")
        key = "accuracy" if args.resnet20_epochs == 8 else f"accuracy_resnet20_{args.resnet20_epochs}_epochs"
        results[key] = accuracy({"cnn_bn": 3, "resnet20": args.resnet20_epochs})
        results[key]["command"] = f"python benchmarks/quantize.py --part accuracy --resnet20-epochs {args.resnet20_epochs}"
    if args.part in ("depthwise", "all"):
        if not DATA.is_dir():
            raise SystemExit(f"--part depthwise needs {DATA} (the real CIFAR-10 subset)")
        results["depthwise"] = accuracy({"mobilenet_v2": args.mobilenet_epochs}, DEPTHWISE_VARIANTS)
        results["depthwise"]["command"] = (f"python benchmarks/quantize.py --part depthwise --mobilenet-epochs "
                                           f"{args.mobilenet_epochs}")
    if args.part in ("shift", "all"):
        results["shift"] = shift()
        results["shift"]["command"] = "python benchmarks/quantize.py --part shift"
    if args.part in ("denoise", "all"):
        results["denoise"] = denoise(steps=300)
        results["denoise"]["command"] = "python benchmarks/quantize.py --part denoise"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
