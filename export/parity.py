"""The one parity check of zoo: run every runtime on the same seeded inputs and compare with a reference.

Rule (Polygraphy's): an element fails only if |out − ref| > atol **and** |out − ref| > rtol·|ref|; relative error
alone misleads near zero, absolute error alone on large outputs. NaN/Inf in either tensor and a shape mismatch
always fail. Per comparison we report max abs, max rel, the 99th-percentile abs error, the smallest tolerance that
would have passed with atol = rtol = t (t = max |out − ref| / max(1, |ref|)), the failing count and, for
classifier-like outputs (2-D, ≥ 2 classes), top-1 agreement (informative; it does not decide pass/fail).

Tolerances are per runtime: a runner whose `precision` is "float16" (model_fp16.onnx) is compared at
atol = rtol = 1e-3 (or the given tolerance, if larger); one whose precision is "int8" (model_int8.onnx) at
atol = rtol = 0.15 with atol relative to the output's scale (atol·max(1, max |ref|): int8's error grows with the
range it quantizes; its real gate is accuracy on held-out data, export/int8.py); every other one at the given
atol/rtol (1e-5 by default);
for an export folder the runtime table's `precision` says the same (export/runtime_table.py). Each row and the
report say which tolerance applied.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.errors import ExportError, first_line
from export.fp16 import FP16_TOLERANCE
from export.int8 import INT8_TOLERANCE
from export.runtimes import Runner
from export.signature import TensorInfo

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-5
DEFAULT_BATCHES = (1, 7)
# H×W for models with dynamic spatial dims: multiples of 16 (4 stride-2 stages), the second one not square
PRIMARY_SPATIAL = (32, 32)
SECOND_SPATIAL = (48, 64)

InputSet = tuple[str, dict[str, np.ndarray]]


def make_inputs(
    input_specs: Sequence[TensorInfo], *, batch: int, seed: int, spatial: tuple[int, ...] | None = None
) -> dict[str, np.ndarray]:
    """Seeded image-like inputs: uniform [0, 1) floats (integers in [0, 10) for integer inputs).

    `spatial` gives the sizes of each input's dynamic non-batch axes, in order (H, W for an NHWC image)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in input_specs:
        dynamic = spec.dynamic_axes
        if dynamic and (spatial is None or len(spatial) < len(dynamic)):
            raise ExportError(
                f"input {spec.name!r} has dynamic dimensions {spec.shape}: give their sizes, e.g. spatial=(32, 32)"
            )
        sizes = iter(spatial or ())
        shape = (batch, *(size if size is not None else next(sizes) for size in spec.shape[1:]))
        feeds[spec.name] = _random(rng, shape, np.dtype(spec.dtype))
    return feeds


def standard_input_sets(
    input_specs: Sequence[TensorInfo],
    *,
    batches: Sequence[int] = DEFAULT_BATCHES,
    seed: int = 0,
    sizes: Sequence[tuple[int, ...]] | None = None,
) -> list[InputSet]:
    """One input set per batch size (1 and 7); for models with dynamic H×W those at the first of `sizes`, plus
    batch 2 at each further size (default sizes 32×32 and 48×64). Each set has its own seed (seed, seed + 1, …)."""
    dynamic = any(spec.dynamic_axes for spec in input_specs)
    if sizes is not None and not dynamic:
        raise ExportError("this model has a fixed input size; image sizes apply only to models with dynamic H×W")
    sizes = [tuple(s) for s in (sizes or (PRIMARY_SPATIAL, SECOND_SPATIAL))] if dynamic else [None]
    plan = [(batch, sizes[0]) for batch in batches] + [(2, size) for size in sizes[1:]]
    return [
        (input_label(batch, size), make_inputs(input_specs, batch=batch, seed=seed + i, spatial=size))
        for i, (batch, size) in enumerate(plan)
    ]


def input_label(batch: int, spatial: tuple[int, ...] | None = None) -> str:
    """'batch 7' or 'batch 2 @ 48x64'."""
    return f"batch {batch}" + (f" @ {'x'.join(map(str, spatial))}" if spatial else "")


def compare(ref: np.ndarray, out: np.ndarray, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
            detail: bool = True) -> dict:
    """Compare one output with its reference (see the module docstring for the rule and the figures).
    `detail=False` leaves out the figures that cost a sort (p99_abs) or a division (max_rel) — None in the result —
    for callers comparing hundreds of tensors (export/localize.py)."""
    ref64 = np.asarray(ref, dtype=np.float64)
    out64 = np.asarray(out, dtype=np.float64)
    if ref64.shape != out64.shape:
        return _shape_mismatch(ref64.shape, out64.shape)
    finite = np.isfinite(ref64) & np.isfinite(out64)
    nonfinite = int(finite.size - finite.sum())
    diff = np.abs(out64 - ref64)[finite]
    scale = np.abs(ref64)[finite]
    fails = int(((diff > atol) & (diff > rtol * scale)).sum()) + nonfinite
    has_values = diff.size > 0
    if detail:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / scale)
    if nonfinite:
        min_tol = math.inf
    else:
        min_tol = float((diff / np.maximum(1.0, scale)).max()) if has_values else 0.0
    result = {
        "passed": fails == 0,
        "shape": list(ref64.shape),
        "max_abs": float(diff.max()) if has_values else 0.0,
        "max_rel": (float(rel.max()) if has_values else 0.0) if detail else None,
        "p99_abs": (float(np.percentile(diff, 99)) if has_values else 0.0) if detail else None,
        "min_tol": min_tol,
        "fails": fails,
        "nonfinite": nonfinite,
        "elements": int(ref64.size),
        "top1": _top1(ref64, out64) if detail else None,
        "reason": None,
    }
    if fails:
        result["reason"] = f"{fails} of {ref64.size} elements exceed atol={atol:g} and rtol={rtol:g}" + (
            f" ({nonfinite} NaN/Inf)" if nonfinite else ""
        )
    return result


def compare_output(ref: np.ndarray, out: np.ndarray, *, atol: float, rtol: float, precision: str = "float32",
                   detail: bool = True) -> dict:
    """`compare` as parity applies it to a model output of a runtime computing in `precision`: for int8 the atol is
    relative to the output's scale, atol·max(1, max |ref|); otherwise as given."""
    if precision == "int8" and np.size(ref):
        atol = atol * max(1.0, float(np.nanmax(np.abs(np.asarray(ref, np.float64)))))
    return compare(ref, out, atol=atol, rtol=rtol, detail=detail)


@dataclass
class ParityRow:
    """One runtime on one input set; figures are the worst over the model's outputs."""

    runtime: str
    inputs: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    p99_abs: float | None = None
    min_tol: float | None = None
    top1: float | None = None
    reason: str | None = None
    outputs: dict[str, dict] = field(default_factory=dict)
    atol: float | None = None  # the tolerance this row was judged at
    rtol: float | None = None

    @classmethod
    def from_outputs(cls, runtime: str, inputs: str, outputs: dict[str, dict]) -> ParityRow:
        def worst(key: str) -> float:
            values = [o[key] for o in outputs.values()]
            return math.nan if any(math.isnan(v) for v in values) else max(values)

        top1s = [o["top1"] for o in outputs.values() if o["top1"] is not None]
        failing = [f"{name}: {o['reason']}" for name, o in outputs.items() if not o["passed"]]
        return cls(
            runtime=runtime,
            inputs=inputs,
            passed=not failing,
            max_abs=worst("max_abs"),
            max_rel=worst("max_rel"),
            p99_abs=worst("p99_abs"),
            min_tol=worst("min_tol"),
            top1=min(top1s) if top1s else None,
            reason="; ".join(failing) or None,
            outputs=outputs,
        )


@dataclass
class ParityReport:
    reference: str
    atol: float
    rtol: float
    rows: list[ParityRow]
    runtimes: dict[str, str]  # runtime name -> what actually ran (versions, ORT providers)
    notes: list[str] = field(default_factory=list)
    tolerances: dict[str, tuple[float, float]] = field(default_factory=dict)  # runtime -> (atol, rtol) if not the default

    @property
    def passed(self) -> bool:
        """Every row passed, and there was at least one comparison."""
        return bool(self.rows) and all(row.passed for row in self.rows)

    def extend(self, other: ParityReport) -> None:
        """Add another run's rows (same reference), e.g. runtimes judged on other inputs."""
        self.rows += other.rows
        self.runtimes.update(other.runtimes)
        self.notes += [note for note in other.notes if note not in self.notes]
        self.tolerances.update(other.tolerances)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "passed": self.passed,
                "reference": self.reference,
                "atol": self.atol,
                "rtol": self.rtol,
                "tolerances": {name: {"atol": a, "rtol": r} for name, (a, r) in self.tolerances.items()},
                "runtimes": self.runtimes,
                "notes": self.notes,
                "rows": [vars(row) for row in self.rows],
            }
        )

    def table(self) -> str:
        header = ("runtime", "inputs", "max abs", "max rel", "p99 abs", "min tol", "top-1", "result")
        body = [
            (
                row.runtime,
                row.inputs,
                *(_number(v) for v in (row.max_abs, row.max_rel, row.p99_abs, row.min_tol)),
                "-" if row.top1 is None else f"{100 * row.top1:.1f}%",
                "PASS" if row.passed else f"FAIL  {row.reason}",
            )
            for row in self.rows
        ]
        widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header) - 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in (header, *body)]
        lines.append("")
        lines += [f"{name}: {detail}" for name, detail in self.runtimes.items()]
        lines += [f"note: {note}" for note in self.notes]
        failed = sum(not row.passed for row in self.rows)
        lines.append(
            f"reference {self.reference}; an element fails only if it exceeds both atol={self.atol:g} and "
            f"rtol={self.rtol:g}·|ref|"
            + "".join(f"; {name}: atol={a:g} rtol={r:g}" for name, (a, r) in self.tolerances.items())
            + "; NaN/Inf always fail"
        )
        lines.append(f"{'PASS' if self.passed else 'FAIL'}: {len(self.rows) - failed} of {len(self.rows)} checks passed")
        return "\n".join(lines)


def run_parity(
    reference: Runner,
    candidates: Sequence[Runner],
    input_sets: Iterable[InputSet],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    notes: Sequence[str] = (),
    tolerances: Mapping[str, tuple[float, float]] | None = None,
) -> ParityReport:
    """Compare every candidate with the reference on every input set. A candidate that raises is a FAIL row with
    the reason; a reference that raises is an ExportError (nothing can be compared). `tolerances` overrides
    (atol, rtol) by runtime name; otherwise each runner gets `runtime_tolerance`."""
    chosen = {runner.name: runtime_tolerance(runner, atol, rtol) for runner in candidates} | dict(tolerances or {})
    rows = []
    for label, feeds in input_sets:
        try:
            expected = reference(feeds)
        except Exception as e:
            raise ExportError(f"the reference runtime {reference.name} failed on {label}: {first_line(e)}") from e
        rows += [_check(runner, label, feeds, expected, *chosen[runner.name]) for runner in candidates]
    return ParityReport(
        reference=reference.name,
        atol=atol,
        rtol=rtol,
        rows=rows,
        runtimes={runner.name: runner.detail for runner in (reference, *candidates)},
        notes=list(notes),
        tolerances={name: tol for name, tol in chosen.items() if tol != (atol, rtol)},
    )


def runtime_tolerance(runner: Runner, atol: float, rtol: float) -> tuple[float, float]:
    """(atol, rtol) for one runner, by its `precision` (float32 when it has none)."""
    return precision_tolerance(getattr(runner, "precision", "float32"), atol, rtol)


def precision_tolerance(precision: str, atol: float, rtol: float) -> tuple[float, float]:
    """(atol, rtol) for a model computing in `precision`: at least FP16_TOLERANCE for float16, the given ones
    otherwise."""
    if precision == "float16":
        return max(atol, FP16_TOLERANCE), max(rtol, FP16_TOLERANCE)
    if precision == "int8":
        return max(atol, INT8_TOLERANCE), max(rtol, INT8_TOLERANCE)
    return atol, rtol


def _check(runner: Runner, label: str, feeds: dict, expected: dict, atol: float, rtol: float) -> ParityRow:
    try:
        actual = runner(feeds)
    except Exception as e:
        return ParityRow(runner.name, label, passed=False, reason=f"{type(e).__name__}: {first_line(e)}",
                         atol=atol, rtol=rtol)
    missing = [name for name in expected if name not in actual]
    if missing:
        return ParityRow(runner.name, label, passed=False, reason=f"missing output(s) {missing}; has {sorted(actual)}",
                         atol=atol, rtol=rtol)
    precision = getattr(runner, "precision", "float32")
    outputs = {name: compare_output(ref, actual[name], atol=atol, rtol=rtol, precision=precision)
               for name, ref in expected.items()}
    row = ParityRow.from_outputs(runner.name, label, outputs)
    row.atol, row.rtol = atol, rtol
    return row


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def _top1(ref: np.ndarray, out: np.ndarray) -> float | None:
    if ref.ndim != 2 or ref.shape[1] < 2 or ref.shape[0] == 0:
        return None
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1)))


def _shape_mismatch(ref_shape: tuple, out_shape: tuple) -> dict:
    nan = math.nan
    return {
        "passed": False,
        "shape": list(ref_shape),
        **dict.fromkeys(("max_abs", "max_rel", "p99_abs"), nan),
        "min_tol": math.inf,
        "fails": int(np.prod(ref_shape)),
        "nonfinite": 0,
        "elements": int(np.prod(ref_shape)),
        "top1": None,
        "reason": f"shape {tuple(out_shape)} differs from the reference {tuple(ref_shape)}",
    }


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2e}"


def _jsonable(value: Any) -> Any:
    """Plain JSON: non-finite floats become the strings 'inf'/'nan' (json.dumps would write bare Infinity/NaN)."""
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
