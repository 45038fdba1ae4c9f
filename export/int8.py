"""Int8 ONNX after folding: ONNX Runtime static quantization, calibrated on training images, kept only if it passes
an accuracy gate on held-out data.

Why after folding: folding is step one of every int8 recipe (TFLite, ORT's `quant_pre_process`, AIMET, NNCF). A BN
left in the graph is a Mul+Add that int8 runs in float between two quantize/dequantize pairs, and its scale would
be quantized into the conv's weights anyway. zoo folds exactly first, then quantizes `model.onnx` once.

The recipe (`quantize`):
- ORT's `quant_pre_process` (shape inference and graph clean-up) on a copy; where it cannot run, the plain graph;
- `quantize_static` in QDQ format: per-channel symmetric int8 weights, uint8 activations; on a CPU without VNNI
  (export/cpu_features.py) with `reduce_range` (7-bit weights), since ORT's U8S8 kernels can saturate there;
- calibration (MinMax, Entropy or Percentile) on images the caller gives: zoo's CLI takes them from the **training**
  split, never the test split the gate measures on;
- `keep_float`: Keras layer names whose ONNX nodes stay in float (the layer's name scope, export/localize.py).

The gate (`check_gate`) compares the int8 model with the fp32 one on held-out inputs: for a classifier, top-1
agreement with fp32 and the accuracy change on labelled images (defaults: agreement ≥ 99 %, drop ≤ 0.5 points);
otherwise the largest error relative to the output's scale (max |fp32|, default ≤ 5 %). A failed gate is an
ExportError, so the export it belongs to is not written. The metadata of the file says `precision: int8`, which is
how runners and parity know what they run; parity judges int8 rows relative to the output's scale
(INT8_TOLERANCE) and prints the gate's figures from int8_report.json.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError, first_line

METHODS = ("minmax", "entropy", "percentile")
# parity for int8 models (export/parity.py): error within 15 % of the output's scale, on held-out images the export
# keeps (int8_sample.npz), not on parity's uniform-noise inputs, which fall outside the calibrated ranges and
# saturate. A bound that catches a broken quantization (wrong scales, saturation), not an accuracy claim: the largest
# error over every gate image in benchmarks/results/quantize.json is 9.6 % of the scale (resnet20). The accuracy
# claim is the gate, on every held-out image, in int8_report.json.
INT8_TOLERANCE = 0.15
REPORT = "int8_report.json"
SAMPLE = "int8_sample.npz"  # a few gate images: what parity runs the int8 model on (synthetic inputs are unlike them)
SAMPLE_IMAGES = 8


@dataclass
class Int8Settings:
    """What `zoo export --int8` asks for. `calibration`: images for the model's one input (float32, the model's
    input shape), from the training split. `evaluation`: held-out inputs for the gate and, for a classifier,
    `labels` (class indices) to measure the accuracy change."""

    calibration: np.ndarray
    evaluation: np.ndarray
    labels: np.ndarray | None = None
    method: str = "minmax"
    keep_float: tuple[str, ...] = ()
    min_agreement: float = 0.99
    max_drop: float = 0.005
    max_rel_error: float = 0.05
    calibration_source: str = ""  # e.g. "digits, train split, 512 images"
    evaluation_source: str = ""
    targets: np.ndarray | None = None  # clean images for an image-to-image model (DnCNN): the gate is PSNR
    max_psnr_drop: float = 0.3  # dB
    bias_correction: bool = False  # export/bias_correction.py
    per_channel: bool = True  # one weight scale per output channel; False: one per tensor (for targets that need it)


@dataclass
class Int8Report:
    method: str
    calibration_images: int
    calibration_source: str
    activations: str
    weights: str
    reduce_range: bool
    kept_float: dict[str, list[str]]  # Keras layer -> its ONNX nodes left in float
    quantized_nodes: dict[str, int]  # op type -> count of QDQ-quantized ops
    gate: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.gate.get("passed"))

    def summary(self) -> str:
        kept = f"; kept in float: {', '.join(self.kept_float)}" if self.kept_float else ""
        return (f"int8: {sum(self.quantized_nodes.values())} ops quantized ({self.method} calibration on "
                f"{self.calibration_images} images, {self.calibration_source}){kept}; gate on "
                f"{describe_gate(self.gate)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


AUTO = "auto"  # --keep-float auto: keep the costliest layers in float until the gate passes
AUTO_MAX_LAYERS = 8
AUTO_MAX_TRIES = 12


def quantize(fp32_path: Path, out_path: Path, model: Any, settings: Int8Settings) -> Int8Report:
    """Write the QDQ int8 model of the ONNX file `fp32_path` to `out_path`, gate it, and report. `model` is the
    Keras model the ONNX file was exported from (its layer names resolve --keep-float).

    With "auto" among `settings.keep_float`, a failed gate tries keeping one more layer in float — the noisiest not
    yet tried (`noisiest_layers`, measured per layer on the gate images with export/localize.py) — and keeps it only
    if the gate's figures improve (keeping a layer in float moves quantize/dequantize pairs around it and can make
    things worse); up to AUTO_MAX_TRIES tries and AUTO_MAX_LAYERS layers kept."""
    import shutil

    import onnx

    auto = AUTO in settings.keep_float
    chosen = [layer for layer in settings.keep_float if layer != AUTO]
    report = _quantize_once(fp32_path, out_path, model, settings, tuple(chosen))
    picked, rejected = [], []
    with tempfile.TemporaryDirectory(prefix="zoo-int8-auto-") as scratch:
        trial_path = Path(scratch) / "trial.onnx"
        while auto and not report.gate["passed"] and len(picked) < AUTO_MAX_LAYERS and \
                len(picked) + len(rejected) < AUTO_MAX_TRIES:
            graph = onnx.load(str(out_path))
            candidates = [layer for layer, _ in noisiest_layers(model, out_path, settings.evaluation[:32])
                          if layer not in chosen and layer not in rejected and _has_nodes(graph, model, layer)]
            if not candidates:
                break
            trial = _quantize_once(fp32_path, trial_path, model, settings, (*chosen, candidates[0]))
            if gate_score(trial.gate) > gate_score(report.gate):
                chosen.append(candidates[0])
                picked.append(candidates[0])
                report = trial
                shutil.copyfile(trial_path, out_path)
            else:
                rejected.append(candidates[0])
    if auto:
        report.notes.append(f"--keep-float auto kept {', '.join(picked) or 'no layer'} in float"
                            + (f"; tried and dropped (no better): {', '.join(rejected)}" if rejected else ""))
    if not report.gate["passed"]:
        worst = ", ".join(f"{layer} ({noise:.1f} dB)" for layer, noise in
                          noisiest_layers(model, out_path, settings.evaluation[:32])[:3])
        raise ExportError(f"the int8 model fails its accuracy gate: {report.gate['reason']}; nothing was written. "
                          f"The layers adding most quantization noise (noise added, relative to the signal, from "
                          f"per-layer SQNR): {worst}: keep them in float (--keep-float LAYER, or --keep-float auto) "
                          f"or loosen the gate")
    return report


def gate_score(gate: dict[str, Any]) -> tuple[float, ...]:
    """Higher is better: what `--keep-float auto` compares between tries."""
    if "psnr_drop" in gate:
        return (-gate["psnr_drop"],)
    if "agreement" in gate:
        return (gate["agreement"], -gate.get("accuracy_drop", 0.0))
    return (-gate["max_rel_error"],)


def noisiest_layers(model: Any, int8_path: Path, images: np.ndarray) -> list[tuple[str, float]]:
    """[(Keras layer, the quantization noise it adds, dB)], noisiest first: where int8 costs the most, measured with
    the localisation mechanism (the Keras model as reference, every layer's quantized tensor). A layer's noise is
    its noise-to-signal ratio 10^(−SQNR/10); what it adds is that minus the ratio of the layer before it in
    topological order (0 before the first), given back in dB (higher: noisier)."""
    from export.localize import localize
    from export.runtimes import KerasRunner, OrtRunner

    reference = KerasRunner(model, name="keras-folded")
    runner = OrtRunner(int8_path, device="cpu", name="ort-cpu-int8")
    feeds = {reference.signature.input_names[0]: images}
    report = localize(reference, [runner], [("gate images", feeds)], runtime_model=model)
    added, previous = [], 0.0
    for layer in report.runtimes[0].layers:
        if math.isnan(layer.sqnr_db):
            continue
        noise = 10 ** (-layer.sqnr_db / 10)  # 0 for an exact layer (SQNR inf)
        if noise > previous:
            added.append((layer.layer, 10 * math.log10(noise - previous)))
        previous = noise
    return sorted(added, key=lambda item: -item[1])


def _has_nodes(proto: Any, model: Any, layer: str) -> bool:
    try:
        keep_float_nodes(proto, model, [layer])
    except ExportError:
        return False
    return True


def _quantize_once(fp32_path: Path, out_path: Path, model: Any, settings: Int8Settings,
                   keep_float: tuple[str, ...]) -> Int8Report:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.cpu_features import cpu_features

    if settings.method not in METHODS:
        raise ExportError(f"unknown calibration method {settings.method!r}: use {', '.join(METHODS)}")
    proto = onnx.load(str(fp32_path))
    if len(proto.graph.input) != 1:
        raise ExportError(f"--int8 needs a model with one input (this one has {len(proto.graph.input)})")
    if len(settings.calibration) == 0:
        raise ExportError("--int8 needs calibration images: none were given")
    input_name = proto.graph.input[0].name
    kept = keep_float_nodes(proto, model, keep_float)
    vnni = cpu_features().get("vnni", False)
    notes = [] if vnni else ["this CPU has no VNNI: weights quantized with reduce_range (7 bits) to avoid the "
                             "saturation ONNX Runtime documents for U8S8 without it"]
    with tempfile.TemporaryDirectory(prefix="zoo-int8-") as scratch:
        source = Path(scratch) / "prepared.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001 - ORT's pre-processing is an optimisation; the plain graph works
            notes.append(f"quant_pre_process skipped ({type(e).__name__}: {first_line(e)})")
            source = fp32_path
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
                quantize_static(
                    str(source), str(out_path), _Reader(input_name, settings.calibration),
                    quant_format=QuantFormat.QDQ, per_channel=settings.per_channel, reduce_range=not vnni,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=[n for ns in kept.values() for n in ns], calibrate_method=methods[settings.method],
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                )
        except Exception as e:
            raise ExportError(f"int8 quantization failed: {type(e).__name__}: {first_line(e)}") from e
    quantized = onnx.load(str(out_path))
    _set_precision(quantized, fp32_path)
    onnx.save(quantized, str(out_path))
    if settings.bias_correction:
        from export.bias_correction import correct_biases

        shifts = correct_biases(fp32_path, out_path, settings.calibration[:256])
        notes.append(f"bias correction: {len(shifts)} convs, largest mean shift removed "
                     f"{max(shifts.values(), default=0.0):.3g}")
        quantized = onnx.load(str(out_path))
    counts: dict[str, int] = {}
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    for node in quantized.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dequantized for i in node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    weights = f"int8 (symmetric, per {'channel' if settings.per_channel else 'tensor'})"
    report = Int8Report(settings.method, int(len(settings.calibration)), settings.calibration_source,
                        "uint8 (asymmetric, per tensor)", weights, not vnni, kept, counts, notes=notes)
    report.gate = check_gate(fp32_path, out_path, settings)
    return report


def keep_float_nodes(proto: Any, model: Any, layers: Sequence[str]) -> dict[str, list[str]]:
    """{Keras layer: names of its ONNX nodes} for each layer to keep in float; an unknown layer is an ExportError."""
    from export.localize import LayerResolver, keras_layers

    known = {layer.path for layer in keras_layers(model)}
    resolve = LayerResolver(model)
    found = {}
    for layer in layers:
        if layer not in known:
            close = sorted(known, key=lambda name: (layer not in name, len(name)))[:5]
            raise ExportError(f"--keep-float {layer}: the exported model has no such layer (e.g. {', '.join(close)})")
        nodes = [n.name for n in proto.graph.node if (p := resolve(n.name)) and (p == layer or p.startswith(layer + "/"))]
        if not nodes:
            raise ExportError(f"--keep-float {layer}: the layer has no op of its own in the ONNX graph (folded "
                              f"into a neighbour?); name the layer that now holds it")
        found[layer] = nodes
    return found


def check_gate(fp32_path: Path, int8_path: Path, settings: Int8Settings) -> dict[str, Any]:
    """Run both models on `settings.evaluation` and judge the int8 one (see the module docstring). `int8_path` is
    an ONNX file or a .tflite file (model_int8.tflite is gated like model_int8.onnx)."""
    from export.ort_session import make_session

    fp32 = make_session(fp32_path, device="cpu").session
    name = fp32.get_inputs()[0].name
    if Path(int8_path).suffix == ".tflite":
        from export.runtimes import TFLiteRunner

        runner = TFLiteRunner(int8_path, name="tflite-int8")
        int8 = lambda x: next(iter(runner({runner.input_names[0]: x}).values()))  # noqa: E731
    else:
        session = make_session(int8_path, device="cpu").session
        int8 = lambda x: session.run(None, {name: x})[0]  # noqa: E731
    ref, out = [], []
    for start in range(0, len(settings.evaluation), 64):
        batch = settings.evaluation[start:start + 64]
        ref.append(fp32.run(None, {name: batch})[0])
        out.append(int8(batch))
    ref, out = np.concatenate(ref), np.concatenate(out)
    gate: dict[str, Any] = {"images": int(len(ref)), "source": settings.evaluation_source}
    scale = float(np.max(np.abs(ref))) or 1.0
    gate["max_rel_error"] = float(np.max(np.abs(out - ref)) / scale)
    if settings.targets is not None:  # image restoration: PSNR against the clean images
        psnr32, psnr8 = _psnr(ref, settings.targets), _psnr(out, settings.targets)
        drop = psnr32 - psnr8
        gate.update(psnr_fp32=psnr32, psnr_int8=psnr8, psnr_drop=drop, max_psnr_drop=settings.max_psnr_drop)
        failures = [] if drop <= settings.max_psnr_drop else [
            f"PSNR {psnr32:.2f} dB → {psnr8:.2f} dB, a drop of {drop:.2f} dB > {settings.max_psnr_drop:g} dB"]
    elif ref.ndim == 2 and ref.shape[1] >= 2:  # classifier
        agreement = float(np.mean(ref.argmax(1) == out.argmax(1)))
        gate.update(agreement=agreement, min_agreement=settings.min_agreement)
        failures = []
        if agreement < settings.min_agreement:
            failures.append(f"top-1 agreement with fp32 {100 * agreement:.2f} % < {100 * settings.min_agreement:g} % "
                            f"(short by {100 * (settings.min_agreement - agreement):.2f} points)")
        if settings.labels is not None:
            acc32 = float(np.mean(ref.argmax(1) == settings.labels))
            acc8 = float(np.mean(out.argmax(1) == settings.labels))
            drop = acc32 - acc8
            gate.update(accuracy_fp32=acc32, accuracy_int8=acc8, accuracy_drop=drop, max_drop=settings.max_drop)
            if drop > settings.max_drop:
                failures.append(f"accuracy {100 * acc32:.2f} % → {100 * acc8:.2f} %, a drop of {100 * drop:.2f} points "
                                f"> {100 * settings.max_drop:g} (over by {100 * (drop - settings.max_drop):.2f})")
    else:
        gate["max_rel_error_allowed"] = settings.max_rel_error
        failures = [] if gate["max_rel_error"] <= settings.max_rel_error else [
            f"max error {100 * gate['max_rel_error']:.2f} % of the output scale > {100 * settings.max_rel_error:g} %"]
    gate["passed"] = not failures
    measured = ""
    if gate.get("accuracy_fp32") is not None:
        measured = (f" (accuracy {100 * gate['accuracy_fp32']:.2f} % → {100 * gate['accuracy_int8']:.2f} % on "
                    f"{gate['images']} images)")
    gate["reason"] = ("; ".join(failures) + measured) if failures else None
    return gate


def _psnr(images: np.ndarray, clean: np.ndarray) -> float:
    """Mean PSNR (dB) of images in [0, 1] (clipped) against the clean ones."""
    err = np.mean(np.square(np.clip(images, 0, 1).astype(np.float64) - clean), axis=tuple(range(1, clean.ndim)))
    return float(np.mean(10 * np.log10(1.0 / np.maximum(err, 1e-12))))


class _Reader:
    """ORT's CalibrationDataReader over an array of images, 32 at a time."""

    def __init__(self, name: str, images: np.ndarray, batch: int = 32) -> None:
        self._batches = iter([{name: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _set_precision(proto: Any, fp32_path: Path) -> None:
    """Copy model.onnx's metadata (layout, provenance) and mark the file int8."""
    import onnx

    from export.fp16 import PRECISION_KEY

    source = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    source[PRECISION_KEY] = "int8"
    del proto.metadata_props[:]
    for key, value in source.items():
        proto.metadata_props.add(key=key, value=value)


def write_sample(path: Path, settings: Int8Settings) -> None:
    """Keep SAMPLE_IMAGES held-out images beside the int8 model, for parity."""
    np.savez_compressed(path, x=settings.evaluation[:SAMPLE_IMAGES], source=settings.evaluation_source)


def sample_input_set(export_dir: Path, input_name: str) -> tuple[str, dict[str, np.ndarray]] | None:
    """Parity's input set for the int8 model: the held-out images the export kept (None when there are none)."""
    try:
        with np.load(Path(export_dir) / SAMPLE, allow_pickle=False) as sample:
            x, source = sample["x"], str(sample["source"])
    except (OSError, ValueError, KeyError):
        return None
    return f"{len(x)} {source or 'held-out images'}", {input_name: x.astype(np.float32)}


def gate_note(export_dir: Path) -> str | None:
    """One line on the int8 gate recorded in an export folder (None when there is no int8_report.json)."""
    try:
        gate = json.loads((Path(export_dir) / REPORT).read_text())["gate"]
    except (OSError, ValueError, KeyError):
        return None
    return f"ort-cpu-int8 passed its export gate on {describe_gate(gate)} (int8_report.json)"


def describe_gate(gate: dict[str, Any]) -> str:
    """'270 digits test images: top-1 agreement 100.00 %, accuracy 98.52 % → 98.52 %' (or PSNR, or max error)."""
    if "psnr_drop" in gate:
        figures = f"PSNR {gate['psnr_fp32']:.2f} dB → {gate['psnr_int8']:.2f} dB"
    elif "agreement" in gate:
        figures = f"top-1 agreement {100 * gate['agreement']:.2f} %"
        if gate.get("accuracy_fp32") is not None:
            figures += f", accuracy {100 * gate['accuracy_fp32']:.2f} % → {100 * gate['accuracy_int8']:.2f} %"
    else:
        figures = f"max error {100 * gate.get('max_rel_error', float('nan')):.2f} % of the output scale"
    return f"{gate.get('images')} {gate.get('source') or 'held-out images'}: {figures}"
