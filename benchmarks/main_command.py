"""The README's main job, timed: `zoo train cnn_bn`, then `zoo export runs/cnn_bn --fold-bn --onnx`.

Both commands run exactly as the README writes them, with the installed `zoo` (the one beside this Python, i.e.
`.venv/bin/zoo`), in a fresh temporary directory as the working directory, so `runs/cnn_bn` is created there and the
repository's own `runs/` is never touched. For each step it records the command, its exit code, its wall time and
its stdout as text (colour codes and backspaces removed, and of each epoch's Keras progress-bar updates only the
last line kept; TensorFlow's log lines go to stderr, whose last lines are kept separately). It then adds the
run's `metrics.json`, the export's `fold_report.json` and the machine (CPUs, load average, Python, TensorFlow,
Keras, tf2onnx, ONNX, ONNX Runtime versions, date) and writes benchmarks/results/main_command.json.

    .venv/bin/python benchmarks/main_command.py [--json PATH] [--keep DIR]

Exit code: 0 when both steps exit 0, else 1.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "main_command.json"
STEPS = [["zoo", "train", "cnn_bn"], ["zoo", "export", "runs/cnn_bn", "--fold-bn", "--onnx"]]
STDERR_TAIL_LINES = 20
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROGRESS = re.compile(r"^\s*\d+/\d+\s+━")
EPOCH = re.compile(r"^Epoch \d+/\d+$")


def condense(stdout: str) -> str:
    """stdout as text: ANSI colours and backspaces removed, and of each run of Keras progress-bar updates only the
    last (the epoch's final line, with the validation figures) kept, and the blank lines the progress bar writes
    dropped; every other line is kept as printed."""
    lines = [ANSI.sub("", line).replace("\b", "").rstrip() for line in stdout.replace("\r", "\n").split("\n")]
    kept: list[str] = []
    for i, line in enumerate(lines):
        if not line:
            if kept and not (PROGRESS.match(kept[-1]) or EPOCH.match(kept[-1])):
                kept.append(line)  # a blank line the command printed, not one of Keras' progress bar
            continue
        following = next((nxt for nxt in lines[i + 1:] if nxt), "")
        if PROGRESS.match(line) and PROGRESS.match(following):
            continue
        kept.append(line)
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept) + "\n" if kept else ""


def zoo_executable() -> str:
    beside = Path(sys.executable).parent / "zoo"
    if beside.exists():
        return str(beside)
    found = shutil.which("zoo")
    if found is None:
        raise SystemExit("no `zoo` executable beside this Python or on PATH: run `pip install -e .` first")
    return found


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.rstrip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    changed = None if status is None else [line[3:] for line in status.splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "changed_tracked_files": changed}  # uncommitted edits, if any


def machine() -> dict:
    ort = version("onnxruntime-gpu") or version("onnxruntime")
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "tf2onnx": version("tf2onnx"),
        "onnx": version("onnx"),
        "onnxruntime": ort,
        "numpy": version("numpy"),
    }


def run_step(argv: list[str], cwd: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(argv, check=False, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    stderr_lines = done.stderr.splitlines()
    return {
        "command": " ".join(["zoo", *argv[1:]]),
        "exit_code": done.returncode,
        "wall_s": round(wall, 2),
        "stdout": condense(done.stdout),
        "stdout_raw_chars": len(done.stdout),
        "stderr_lines": len(stderr_lines),
        "stderr_tail": stderr_lines[-STDERR_TAIL_LINES:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--keep", type=Path, help="run in this (new or empty) directory and keep it")
    args = parser.parse_args(argv)

    zoo = zoo_executable()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir, cleanup = args.keep.resolve(), None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="zoo-main-command-")
        workdir = Path(cleanup.name)

    git_before = git_state()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = [round(x, 2) for x in os.getloadavg()]
    steps = []
    for step in STEPS:
        result = run_step([zoo, *step[1:]], workdir)
        steps.append(result)
        print(f"$ {result['command']}   # exit {result['exit_code']}, {result['wall_s']} s", flush=True)
        print(result["stdout"], end="" if result["stdout"].endswith("\n") else "\n", flush=True)
        if result["exit_code"] != 0:
            break
    load_after = [round(x, 2) for x in os.getloadavg()]

    def read_json(relative: str):
        path = workdir / relative
        return json.loads(path.read_text()) if path.exists() else None

    record = {
        "what": "the README's main job: train cnn_bn on the bundled digits, fold BN, export SavedModel + ONNX, "
                "print the parity report",
        "regenerate": ".venv/bin/python benchmarks/main_command.py",
        "commands": [" ".join(step) for step in STEPS],
        "working_directory": str(workdir) if args.keep else "a fresh temporary directory (the repository's runs/ "
                                                               "is not touched)",
        "zoo_executable": os.path.relpath(zoo, ROOT) if zoo.startswith(str(ROOT)) else zoo,
        "date_utc": started.isoformat(timespec="seconds"),
        "steps": steps,
        "wall_s_total": round(sum(step["wall_s"] for step in steps), 2),
        "all_exit_zero": len(steps) == len(STEPS) and all(step["exit_code"] == 0 for step in steps),
        "metrics": read_json("runs/cnn_bn/metrics.json"),
        "fold_report": read_json("runs/cnn_bn/export/fold_report.json"),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": machine(),
        "git_before": git_before,
        "git_after": git_state(),
    }
    if cleanup is not None:
        cleanup.cleanup()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json} (total {record['wall_s_total']} s)")
    return 0 if record["all_exit_zero"] else 1


if __name__ == "__main__":
    sys.exit(main())
