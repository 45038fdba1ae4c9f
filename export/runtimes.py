"""One small runner per runtime, all with the same call:

    runner(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]   # keyed by output name

and the attributes `name` (a runtime of export/runtime_table.py: "keras", "keras-folded", "savedmodel", "ort-cpu",
"ort-cuda", "ort-cpu-fp16", …, "tflite"),
`input_names`, `output_names` (model order for Keras and ONNX; SavedModel and TFLite signatures keep names only,
sorted), `input_shapes` ({input name: shape in the model's NHWC layout, None for dynamic dims}) and `detail` (what actually ran, e.g. the ONNX Runtime providers in use).

ONNX Runtime never falls back silently here: the runner reports `session.get_providers()`, and device="cuda"
(or "tensorrt") raises ExportError when CUDA (TensorRT) cannot run (onnxruntime-gpu lists CUDAExecutionProvider as "available" even on a
machine without CUDA libraries, then logs an error and runs on CPU). Sessions come from export/ort_session.py.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from export.errors import ExportError, first_line
from export.ort_session import (  # noqa: F401 - CUDA, CPU, cuda_available, cuda_unavailable_reason: re-exported
    CPU,
    CUDA,
    TENSORRT,
    CudaGraphs,
    bind,
    cuda_available,
    cuda_unavailable_reason,
    make_session,
    ort_device,
    run_bound,
)
from export.savedmodel import SIGNATURE_KEY
from export.tensor_types import from_ort
from export.signature import ModelSignature, describe


class Runner(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]
    input_shapes: dict[str, tuple[int | None, ...]]
    input_dtypes: dict[str, str]  # NumPy dtype names, e.g. "float32", "int64"
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
        self.input_dtypes = {t.name: t.dtype for t in self.signature.inputs}
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
        self.input_dtypes = {spec.name: spec.dtype.name for spec in kwargs.values()}
        self.detail = f"TensorFlow {tf.__version__}, signature {SIGNATURE_KEY}"

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        outputs = self._function(**{self._keyword[n]: tf.constant(feeds[n]) for n in self.input_names})
        return {name: outputs[name].numpy() for name in self.output_names}


class OrtRunner:
    """ONNX Runtime on device "cpu", "cuda" (must run on CUDA or raise), "tensorrt" (must run on TensorRT or raise)
    or "auto" (CUDA when usable, else CPU), through the one session factory (export/ort_session.py).

    For an `nchw=True` export the runner takes the same NHWC feeds as every other runner and returns NHWC outputs,
    transposing the tensors the model's metadata lists, so parity compares like with like. `io_binding=True` runs
    through ORT's IO binding (inputs copied to the session's device, outputs bound there and copied back; None: only
    when the session runs on a GPU); `bound(feeds)` keeps the inputs and outputs on the device for timing.
    `cuda_graph=True` (device cuda) replays one CUDA graph per input shape (export/ort_session.py CudaGraphs).
    `precision` is "float16" for a model written by export/fp16.py (its metadata says so), else "float32".
    """

    def __init__(self, path: Path | str, *, device: str = "auto", name: str | None = None,
                 disabled_optimizers: tuple[str, ...] = (), io_binding: bool | None = False, cuda_graph: bool = False,
                 **session_options: Any) -> None:
        """`disabled_optimizers`: ORT graph rewrites to switch off by name (e.g. "Pad_Fusion", which changes
        ResNet50V2's outputs by ~5e-3 in ORT 1.31 — an ORT bug, not an export one). `session_options`: further
        `make_session` options (graph_optimization, threads, cudnn_conv_algo_search, allow_spinning, tensorrt_fp16,
        tensorrt_cache)."""
        import onnxruntime as ort

        from export.fp16 import PRECISION_KEY
        from export.onnx import onnx_layout

        made = make_session(path, device=device, disabled_optimizers=disabled_optimizers, cuda_graph=cuda_graph,
                            **session_options)
        self.path = Path(path)
        self.disabled_optimizers = tuple(disabled_optimizers)
        self.session = made.session
        self.providers = made.providers
        self.fallback = made.fallback  # why "auto" is not on CUDA (None when it is, or when CPU was asked for)
        self.settings = made.settings  # "CUDA graphs", "TensorRT float16 allowed", "engine cache DIR", …
        self.io_binding = made.on_gpu if io_binding is None else io_binding
        self._device = ort_device(made.providers)
        self._graphs = CudaGraphs(self.session, device=self._device) if cuda_graph else None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self._nchw_inputs, self._nchw_outputs = onnx_layout(metadata)
        self.precision = metadata.get(PRECISION_KEY, "float32")
        self.name = name or ("ort-tensorrt" if made.providers[0] == TENSORRT else
                             "ort-cuda" if made.on_gpu else "ort-cpu")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        dims = {i.name: tuple(d if isinstance(d, int) else None for d in i.shape) for i in self.session.get_inputs()}
        self.input_dtypes = {i.name: from_ort(i.type).numpy or i.type for i in self.session.get_inputs()}
        self.input_shapes = {n: tuple(d[axis] for axis in (0, 2, 3, 1)) if n in self._nchw_inputs else d
                             for n, d in dims.items()}
        layout = ", NCHW model fed from NHWC" if self._nchw_inputs else ""
        off = f", optimizers off: {', '.join(disabled_optimizers)}" if disabled_optimizers else ""
        half = ", float16 weights" if self.precision == "float16" else ""
        bound = ", IO binding" if self.io_binding and not cuda_graph else ""
        settings = "".join(f", {setting}" for setting in made.settings)
        self.detail = (f"onnxruntime {ort.__version__}{half}, providers: {', '.join(made.providers)}{settings}{bound}"
                       f"{layout}{off}")

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = self._model_inputs(feeds)
        if self._graphs is not None:
            values = self._graphs(inputs)
        elif self.io_binding:
            values = run_bound(self.session, inputs, device=self._device)
        else:
            values = self.session.run(self.output_names, inputs)
        return {
            n: np.transpose(v, (0, 2, 3, 1)) if n in self._nchw_outputs else v
            for n, v in zip(self.output_names, values)
        }

    def bound(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        """A call that runs on `feeds` copied to the session's device once, outputs left there (IO binding)."""
        return bind(self.session, self._model_inputs(feeds), device=self._device)

    def _model_inputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            n: np.transpose(feeds[n], (0, 3, 1, 2)) if n in self._nchw_inputs else feeds[n] for n in self.input_names
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
        self.path = Path(path)
        self.name = name
        self.input_names = list(signature["inputs"])
        self.output_names = list(signature["outputs"])
        details = self._runner.get_input_details()
        self.input_shapes = {n: tuple(int(d) if d > 0 else None for d in details[n]["shape_signature"])
                             for n in self.input_names}
        self.input_dtypes = {n: np.dtype(details[n]["dtype"]).name for n in self.input_names}
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
