"""One small runner per runtime, all with the same call:

    runner(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]   # keyed by output name

and the attributes `name` ("keras", "keras-folded", "savedmodel", "ort-cpu", "ort-cuda", "tflite"),
`input_names`, `output_names` (model order for Keras and ONNX; SavedModel and TFLite signatures keep names only,
sorted), `input_shapes` ({input name: shape in the model's NHWC layout, None for dynamic dims}) and `detail` (what actually ran, e.g. the ONNX Runtime providers in use).

ONNX Runtime never falls back silently here: the runner reports `session.get_providers()`, and device="cuda"
raises ExportError when CUDA cannot run (onnxruntime-gpu lists CUDAExecutionProvider as "available" even on a
machine without CUDA libraries, then logs an error and runs on CPU).
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from export.errors import ExportError, first_line
from export.savedmodel import SIGNATURE_KEY
from export.signature import ModelSignature, describe

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Runner(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]
    input_shapes: dict[str, tuple[int | None, ...]]
    detail: str

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class KerasRunner:
    """model(inputs, training=False), eager. `signature` describes the inputs for `parity.make_inputs`."""

    def __init__(self, model: Any, *, name: str = "keras") -> None:
        import keras

        from export.loading import load_keras

        source = Path(model).name if isinstance(model, (str, Path)) else "in memory"
        self.model = load_keras(model) if isinstance(model, (str, Path)) else model
        self.signature: ModelSignature = describe(self.model)
        self.name = name
        self.input_names = self.signature.input_names
        self.output_names = self.signature.output_names
        self.input_shapes = {t.name: tuple(t.shape) for t in self.signature.inputs}
        self.detail = f"Keras {keras.__version__} ({keras.backend.backend()}), {source}"

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import keras

        outputs = self.signature.call(self.model, feeds)
        return {name: keras.ops.convert_to_numpy(value) for name, value in outputs.items()}


class SavedModelRunner:
    """The `serving_default` signature of a SavedModel folder."""

    def __init__(self, path: Path | str, *, name: str = "savedmodel") -> None:
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
            self._function = loaded.signatures[SIGNATURE_KEY]
        except Exception as e:
            raise ExportError(f"cannot load SavedModel {path}: {first_line(e)}") from e
        self._loaded = loaded  # the signature function needs its owner (and the variables) alive
        # Python keyword names are sanitised (meta-1 -> meta_1); the spec keeps the model's input name.
        kwargs = self._function.structured_input_signature[1]
        self._keyword = {spec.name: keyword for keyword, spec in kwargs.items()}
        self.name = name
        self.input_names = sorted(self._keyword)
        self.output_names = sorted(self._function.structured_outputs)
        self.input_shapes = {spec.name: tuple(spec.shape.as_list()) for spec in kwargs.values()}
        self.detail = f"TensorFlow {tf.__version__}, signature {SIGNATURE_KEY}"

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        outputs = self._function(**{self._keyword[n]: tf.constant(feeds[n]) for n in self.input_names})
        return {name: outputs[name].numpy() for name in self.output_names}


class OrtRunner:
    """ONNX Runtime on device "cpu", "cuda" (must run on CUDA or raise) or "auto" (CUDA when usable, else CPU).

    For an `nchw=True` export the runner takes the same NHWC feeds as every other runner and returns NHWC outputs,
    transposing the tensors the model's metadata lists, so parity compares like with like.
    """

    def __init__(self, path: Path | str, *, device: str = "auto", name: str | None = None,
                 disabled_optimizers: tuple[str, ...] = ()) -> None:
        """`disabled_optimizers`: ORT graph rewrites to switch off by name (e.g. "Pad_Fusion", which changes
        ResNet50V2's outputs by ~5e-3 in ORT 1.31 — an ORT bug, not an export one)."""
        import onnxruntime as ort

        from export.onnx import onnx_layout

        if device not in ("cpu", "cuda", "auto"):
            raise ExportError(f"unknown ONNX Runtime device {device!r}: use cpu, cuda or auto")
        if device == "cuda":
            reason = cuda_unavailable_reason()
            if reason:
                raise ExportError(f"CUDA execution provider is not usable here: {reason}")
        wants_cuda = device == "cuda" or (device == "auto" and cuda_available())
        providers = [CUDA, CPU] if wants_cuda else [CPU]
        try:
            extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
            self.session = ort.InferenceSession(str(path), providers=providers, **extra)
        except Exception as e:
            raise ExportError(f"ONNX Runtime cannot load {path}: {first_line(e)}") from e
        in_use = self.session.get_providers()
        if device == "cuda" and in_use[0] != CUDA:
            raise ExportError(f"CUDA execution provider is not usable here: the session runs on {in_use[0]}")
        self._nchw_inputs, self._nchw_outputs = onnx_layout(self.session.get_modelmeta().custom_metadata_map)
        self.name = name or ("ort-cuda" if in_use[0] == CUDA else "ort-cpu")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        dims = {i.name: tuple(d if isinstance(d, int) else None for d in i.shape) for i in self.session.get_inputs()}
        self.input_shapes = {n: tuple(d[axis] for axis in (0, 2, 3, 1)) if n in self._nchw_inputs else d
                             for n, d in dims.items()}
        layout = ", NCHW model fed from NHWC" if self._nchw_inputs else ""
        off = f", optimizers off: {', '.join(disabled_optimizers)}" if disabled_optimizers else ""
        self.detail = f"onnxruntime {ort.__version__}, providers: {', '.join(in_use)}{layout}{off}"

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {
            n: np.transpose(feeds[n], (0, 3, 1, 2)) if n in self._nchw_inputs else feeds[n] for n in self.input_names
        }
        values = self.session.run(self.output_names, inputs)
        return {
            n: np.transpose(v, (0, 2, 3, 1)) if n in self._nchw_outputs else v
            for n, v in zip(self.output_names, values)
        }


class TFLiteRunner:
    """The `serving_default` signature runner of a .tflite file (ai-edge-litert; tf.lite.Interpreter if missing).
    The signature runner resizes dynamic inputs to each call's batch size (and H×W)."""

    def __init__(self, path: Path | str, *, name: str = "tflite") -> None:
        interpreter_class, runtime = _tflite_interpreter()
        try:
            interpreter = interpreter_class(model_path=str(path))
            signature = interpreter.get_signature_list()[SIGNATURE_KEY]
            self._runner = interpreter.get_signature_runner(SIGNATURE_KEY)
        except Exception as e:
            raise ExportError(f"cannot load TFLite model {path}: {first_line(e)}") from e
        self._interpreter = interpreter
        self.name = name
        self.input_names = list(signature["inputs"])
        self.output_names = list(signature["outputs"])
        details = self._runner.get_input_details()
        self.input_shapes = {n: tuple(int(d) if d > 0 else None for d in details[n]["shape_signature"])
                             for n in self.input_names}
        self.detail = runtime

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._runner(**{n: feeds[n] for n in self.input_names})
        return {n: outputs[n] for n in self.output_names}


def _tflite_interpreter() -> tuple[type, str]:
    try:
        from ai_edge_litert import __version__ as version
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tf.lite.Interpreter (TensorFlow {tf.__version__}; ai-edge-litert not installed)"
    return Interpreter, f"ai-edge-litert {version}"


def cuda_available() -> bool:
    """True when ONNX Runtime can really create and run a session on the CUDA execution provider."""
    return cuda_unavailable_reason() is None


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """Why ONNX Runtime cannot run on CUDA here (None when it can), found by running a one-node model with
    CPU fallback disabled. ORT reports the real cause (a missing libcublas…) only on the process' stderr, so that
    is captured while probing. Cached: the answer does not change within a process."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDA execution provider (install onnxruntime-gpu)"
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with _captured_process_output() as captured:
        if hasattr(ort, "preload_dlls"):  # loads CUDA/cuDNN from the nvidia-* wheels when they are installed
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        try:
            session = ort.InferenceSession(_probe_model(), options, providers=[CUDA])
            session.run(None, {"x": np.ones((1,), np.float32)})
            return None
        except Exception as e:
            error = first_line(e)
    return _load_failure(captured.getvalue()) or error


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "cuda_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _load_failure(log: str) -> str | None:
    """The useful part of ORT's provider-loading log, e.g. 'libcublasLt.so.13: cannot open shared object file'."""
    for line in log.splitlines():
        if "with error: " in line:
            return line.split("with error: ", 1)[1].strip()
    for line in log.splitlines():
        if "Failed to create CUDAExecutionProvider" in line:
            return line[line.index("Failed to create") :].split(" Please install")[0].strip()
    return None


@contextlib.contextmanager
def _captured_process_output() -> Iterator[io.StringIO]:
    """Capture what native code writes to file descriptors 1 and 2 (and Python's sys.stdout/stderr) meanwhile."""
    import sys

    captured = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.write(sink.read().decode(errors="replace"))
