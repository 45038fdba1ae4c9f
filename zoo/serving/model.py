"""The model a server serves: an ONNX Runtime session (export.runtimes.OrtRunner) and its protocol signature.

The signature is the one the runner accepts: for an `--nchw` export OrtRunner takes NHWC tensors and transposes
them itself, so the server describes (and validates) NHWC shapes, like every other zoo runtime.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from export.tensor_types import from_ort
from export.triton import sanitize_model_name
from zoo.errors import ZooError
from zoo.serving.protocol import ModelSpec, TensorSpec

NHWC_FROM_NCHW = (0, 2, 3, 1)
_URL_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class ServedModel:
    """`model(feeds) -> {output name: array}`, plus `.spec` (protocol signature), `.providers` and `.detail`.

    On a GPU (CUDA or TensorRT) requests run through IO binding; `cuda_graph=True` (device cuda) replays one CUDA
    graph per batch size, for models whose inputs are fixed apart from the batch (`check_cuda_graph_shapes`).
    `tensorrt_fp16` (device tensorrt): TensorRT may use float16 kernels (None: for a float16 model only). A float16
    model (`zoo export --fp16`) is served as it is: float32 in and out, float16 inside."""

    def __init__(self, path: Path | str, *, name: str | None = None, device: str = "auto", cuda_graph: bool = False,
                 tensorrt_fp16: bool | None = None) -> None:
        from export.onnx import onnx_layout
        from export.runtimes import OrtRunner

        if name is not None:
            check_model_name(name)
        path = Path(path).expanduser()
        if not path.is_file():
            raise ZooError(f"model {path} does not exist; pass an .onnx file (e.g. from `zoo export --onnx`)")
        if path.suffix != ".onnx":
            raise ZooError(f"model {path} is not an .onnx file; `zoo serve` serves ONNX models (zoo export --onnx)")
        self.path = path
        options = {"tensorrt_fp16": tensorrt_fp16} if tensorrt_fp16 is not None else {}
        self.runner = OrtRunner(path, device=device, io_binding=None, cuda_graph=cuda_graph, **options)
        session = self.runner.session
        _, nchw_outputs = onnx_layout(session.get_modelmeta().custom_metadata_map)
        inputs = tuple(TensorSpec(i.name, from_ort(i.type), _dims(self.runner.input_shapes[i.name]))
                       for i in session.get_inputs())
        outputs = []
        for o in session.get_outputs():
            dims = _dims(o.shape)
            if o.name in nchw_outputs and len(dims) == 4:
                dims = tuple(dims[axis] for axis in NHWC_FROM_NCHW)
            outputs.append(TensorSpec(o.name, from_ort(o.type), dims))
        self.spec = ModelSpec(name or model_name(path), inputs, tuple(outputs))
        if cuda_graph:
            check_cuda_graph_shapes(self.spec)
        self.providers: list[str] = session.get_providers()
        self.detail = self.runner.detail

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner(feeds)


def model_name(path: Path) -> str:
    """A URL- and Triton-safe model name from a file name: `runs/cnn_bn/export/model.onnx` -> `cnn_bn` (the run's
    name when the file is an export's model.onnx), `my net.onnx` -> `my_net`."""
    stem = path.stem
    if stem == "model" and path.parent.name == "export" and path.parent.parent.name:
        stem = path.parent.parent.name
    return sanitize_model_name(stem)


def check_model_name(name: str) -> str:
    """`name` if it can be one URL path segment as it is: letters, digits, `_`, `-`, `.` (what model_name and
    export/triton.py's sanitize_model_name produce), not `.` or `..` alone (clients resolve those away). Anything
    else is a ZooError: a `/` splits the path (Starlette matches `{model}` within one segment, after uvicorn has
    decoded `%2F`), and a name that needs percent-encoding is one every client must remember to encode."""
    if not _URL_SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise ZooError(f"--name {name!r} cannot be a model name in a URL: use letters, digits, '_', '-' and '.' "
                       f"only (not '.' or '..' alone), e.g. {sanitize_model_name(name)!r}")
    return name


def check_cuda_graph_shapes(spec: ModelSpec) -> None:
    """A CUDA graph replays fixed shapes: zoo captures one per batch size (the batcher's runs hold 1 to --max-batch
    rows), so every other dimension of every input must be fixed. A ZooError names the input that is not."""
    for tensor in spec.inputs:
        if -1 in tensor.shape[1:]:
            shape = "×".join("?" if d == -1 else str(d) for d in tensor.shape)
            raise ZooError(f"--cuda-graph needs inputs whose sizes are fixed apart from the batch (a CUDA graph "
                           f"replays fixed shapes; zoo keeps one per batch size, up to --max-batch), but input "
                           f"{tensor.name!r} is {shape}: serve without --cuda-graph, or export the model with a "
                           f"fixed input size")


def _dims(shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)

