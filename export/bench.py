"""`zoo bench`: every runtime of one export directory, at several batch sizes, timed in one run.

Per runtime and batch:
- cold start: a fresh load of the model plus its first inference at that batch, in ms (the libraries themselves
  are imported before anything is timed, so this is what loading one more model costs a running process);
- p50 / p90 / p99 latency in ms over `runs` calls after `warmup` untimed ones, numpy in and numpy out (the cost a
  caller sees: Keras' tensor conversion, SavedModel's tf.constant, the NCHW transposes, and for ONNX Runtime
  without IO binding the host↔device copies; with IO binding the inputs and outputs stay on the device);
- throughput in images/s (batch / p50);
- the ratio of its p50 to the baseline's measured in the same rounds, and the interquartile range of the
  round-by-round ratios. The baseline is Keras eager on the original model unless `baseline` names another runtime
  (e.g. `ort-cuda` for float16 against float32 on a GPU; then no Keras model is needed and TensorFlow is not
  imported).
Runtimes run interleaved (export/timing.py). ONNX Runtime sessions run with thread spinning off: with sessions
taking turns on few cores, an idle session's spinning threads would steal the cores from the one running.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.artifacts import find_artifacts
from export.atomic import write_text
from export.errors import ExportError
from export.runtime_table import (
    NAMES,
    REFERENCE,
    RENAMED,
    RUNTIMES,
    RunOptions,
    Runtime,
    by_name,
    check_device,
    requested,
    runs_on,
    select,
)
from export.signature import runner_inputs
from export.timing import paired_ratios, summarize, time_interleaved

BASELINE = REFERENCE
DEFAULT_BATCHES = (1, 8, 32)


@dataclass
class BenchRow:
    runtime: str
    batch: int
    cold_start_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # images/s at the p50 latency
    ratio: float  # p50 / baseline p50 (< 1: faster than the baseline)
    ratio_iqr: tuple[float, float]  # 25th and 75th percentile of the round-by-round ratios
    timings: dict[str, float] = field(default_factory=dict)  # every percentile, min, mean, runs


@dataclass
class BenchReport:
    model: str
    input_shape: str  # e.g. "28×28×1"
    rows: list[BenchRow]
    runtimes: dict[str, str]  # runtime -> what ran (versions, ORT providers, files)
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    baseline: str = BASELINE

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "input_shape": self.input_shape, "baseline": self.baseline,
                "settings": self.settings, "environment": environment(), "runtimes": self.runtimes,
                "notes": self.notes, "rows": [vars(row) | {"ratio_iqr": list(row.ratio_iqr)} for row in self.rows]}

    def write_json(self, path: Path | str, *, overwrite: bool = False) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=2), overwrite=overwrite)

    def table(self) -> str:
        header = ("runtime", "batch", "cold start ms", "p50 ms", "p90 ms", "p99 ms", "images/s",
                  f"p50 / {self.baseline} (round IQR)")
        body = [(row.runtime, str(row.batch), f"{row.cold_start_ms:.1f}", f"{row.p50_ms:.2f}", f"{row.p90_ms:.2f}",
                 f"{row.p99_ms:.2f}", f"{row.throughput:.1f}",
                 "1.00× (baseline)" if row.runtime == self.baseline else
                 f"{row.ratio:.2f}× ({row.ratio_iqr[0]:.2f}–{row.ratio_iqr[1]:.2f})") for row in self.rows]
        widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                 for r in (header, *body)]
        lines.append("")
        lines += [f"{name}: {detail}" for name, detail in self.runtimes.items()]
        lines += [f"note: {note}" for note in self.notes]
        s = self.settings
        lines.append(f"input {self.input_shape}; {s['runs']} timed runs after {s['warmup']} warm-up per runtime and "
                     f"batch, runtimes interleaved; ONNX Runtime device {s['device']}"
                     f"{', IO binding' if s['io_binding'] else ''}; ratio < 1: faster than {self.baseline}")
        return "\n".join(lines)


def parse_runtimes(text: str | None) -> list[str] | None:
    """'keras,ort-cpu' -> ['keras', 'ort-cpu'] (None: every runtime the export holds); names are the runtime
    table's (export/runtime_table.py), and an unknown one is an error that lists them."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in NAMES]
    if unknown or not names:
        renamed = "".join(f"; {name} is now {RENAMED[name]}" for name in unknown if name in RENAMED)
        raise ExportError(f"unknown runtime(s) {', '.join(unknown) or repr(text)}: choose from {', '.join(NAMES)}"
                          f"{renamed}")
    return list(dict.fromkeys(names))


def parse_batches(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; anything but positive integers is an error."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ExportError(f"--batch {text!r} is not a comma-separated list of positive integers (e.g. 1,8,32)")
    return list(dict.fromkeys(int(part) for part in parts))


def run_bench(
    export_dir: Path | str,
    *,
    runtimes: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    device: str = "auto",
    warmup: int = 5,
    runs: int = 50,
    size: tuple[int, int] | None = None,
    io_binding: bool = False,
    baseline: str = BASELINE,
    model_name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time every requested runtime of `export_dir` at every batch size (see the module docstring).

    `runtimes`: names from the runtime table (None: all the export holds that run on `device`, chosen as parity
    chooses them); the baseline (`baseline`, Keras by default) is always measured. `size`: H×W for models with
    dynamic spatial dims (default 32×32, as parity). `device`: auto, cpu, cuda or tensorrt, for the ONNX Runtime
    runtimes (ort-cpu, ort-cuda, ort-tensorrt)."""
    from export.parity import PRIMARY_SPATIAL, make_inputs

    check_device(device)
    if runs < 1 or warmup < 0:
        raise ExportError(f"--runs must be ≥ 1 and --warmup ≥ 0 (got {runs} and {warmup})")
    if not batches or any(int(b) < 1 for b in batches):
        raise ExportError(f"batch sizes must be positive integers, not {list(batches)}")
    names = list(runtimes) if runtimes is not None else None
    if names is not None:
        parse_runtimes(",".join(names))
    base = by_name(baseline.strip())
    found = find_artifacts(export_dir)
    if base.artifact not in found:
        way_out = "choose another with --baseline" if base.name == BASELINE else f"make it with {base.how_to_get()}"
        raise ExportError(f"no {base.artifact} in {export_dir}: bench needs it for its baseline {base.name} "
                          f"({way_out})")
    if (reason := runs_on(base, device)) is not None:
        raise ExportError(f"the baseline {base.name} cannot run with --device {device}: {reason}")
    if names is None:
        chosen, notes = select(found, device)
        names = [runtime.name for runtime in chosen]
        missing: dict[str, list[Runtime]] = {}
        for runtime in RUNTIMES:
            if runtime.artifact not in found and requested(runtime, device) and runs_on(runtime, device) is None:
                missing.setdefault(runtime.artifact, []).append(runtime)
        notes += [f"{', '.join(r.name for r in group)} not measured: no {artifact} (make it with "
                  f"{group[0].how_to_get()})" for artifact, group in missing.items()]
    else:
        notes = []
        for runtime in map(by_name, names):
            if runtime.artifact not in found:
                raise ExportError(f"runtime {runtime.name} needs {runtime.artifact}, which {export_dir} does not "
                                  f"hold: re-export with {runtime.how_to_get()}")
            if (reason := runs_on(runtime, device)) is not None:
                raise ExportError(f"runtime {runtime.name} cannot run with --device {device}: {reason}")
        if base.name not in names:
            notes.append(f"{base.name} measured as the baseline although not requested")
    names = [base.name] + [n for n in names if n != base.name]

    options = RunOptions(io_binding=io_binding, allow_spinning=False)
    chosen = [by_name(name) for name in names]
    for runtime in chosen:  # import what the runtimes need first, so no cold start pays for a library import
        runtime.preload()
    loaders = {runtime.name: functools.partial(runtime.open, found[runtime.artifact], options) for runtime in chosen}
    probe = loaders[base.name]()
    specs = runner_inputs(probe)
    dynamic = any(spec.dynamic_axes for spec in specs)
    if size is not None and not dynamic:
        raise ExportError("this model has a fixed input size; --size applies only to models with dynamic H×W")
    spatial = (size or PRIMARY_SPATIAL) if dynamic else None
    del probe
    say = log or (lambda message: None)
    rows, details = [], {}
    for batch in batches:
        feeds = make_inputs(specs, batch=batch, seed=batch, spatial=spatial)
        calls, cold = {}, {}
        for n in names:
            start = time.perf_counter()
            runner = loaders[n]()
            runner(feeds)
            cold[n] = (time.perf_counter() - start) * 1e3
            details[n] = runner.detail
            calls[n] = runner.bound(feeds) if io_binding and hasattr(runner, "bound") else _call(runner, feeds)
        say(f"batch {batch}: timing {', '.join(names)} ({runs} runs each)")
        times = time_interleaved(calls, runs=runs, warmup=warmup)
        ratios = paired_ratios(times, base.name)
        base_p50 = summarize(times[base.name])["p50"]
        for n in names:
            stats = summarize(times[n])
            spread = ratios.get(n, {"p25": 1.0, "p75": 1.0})
            rows.append(BenchRow(runtime=n, batch=batch, cold_start_ms=cold[n], p50_ms=stats["p50"],
                                 p90_ms=stats["p90"], p99_ms=stats["p99"], throughput=batch * 1e3 / stats["p50"],
                                 ratio=stats["p50"] / base_p50, ratio_iqr=(spread["p25"], spread["p75"]),
                                 timings=stats))
    shape = specs[0].shape[1:]
    sizes = iter(spatial or ())
    input_shape = "×".join(str(d if d is not None else next(sizes)) for d in shape)
    settings = {"runtimes": names, "batches": list(batches), "device": device, "warmup": warmup, "runs": runs,
                "size": list(spatial) if spatial else None, "io_binding": io_binding}
    return BenchReport(model=model_name or str(export_dir), input_shape=input_shape, rows=rows, runtimes=details,
                       settings=settings, notes=list(dict.fromkeys(notes)), baseline=base.name)


def environment() -> dict[str, Any]:
    """Where the figures were measured."""
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _call(runner: Any, feeds: dict) -> Callable[[], Any]:
    return lambda: runner(feeds)
