"""A Triton Inference Server model repository for an exported ONNX model:

    REPO/<name>/config.pbtxt      platform "onnxruntime_onnx", batching, inputs/outputs
    REPO/<name>/1/model.onnx      the export's model (and model.onnx.data when its weights are external)

The config is written from the ONNX graph itself (names, element types, dims), in the protobuf text format of
Triton's ModelConfig. When every input and output has a dynamic leading dim, that dim is the batch: `dims` leave it
out, `max_batch_size` is set and `dynamic_batching {}` lets Triton stack requests; otherwise the model cannot be
batched by Triton, so `max_batch_size: 0` and the full dims are written. -1 marks a dynamic dim. A tensor that is
only a batch (shape [N]) gets `dims: [1]` with `reshape { shape: [] }`, Triton's way to say "one scalar per row".

Triton runs the ONNX graph as it is: an `--nchw` export is described with its NCHW dims.
The model folder is written atomically (export/atomic.py): a failure leaves any previous version untouched, and a
model folder zoo did not write is not replaced.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from export.atomic import atomic_output, check_target
from export.errors import ExportError, first_line
from export.onnx import EXTERNAL_DATA_SUFFIX
from export.tensor_types import from_onnx

PLATFORM = "onnxruntime_onnx"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
TRITON_MODEL = "Triton model"  # the kind of folder in zoo's manifest


@dataclass(frozen=True)
class TritonTensor:
    name: str
    data_type: str              # TYPE_FP32, ...
    dims: tuple[int, ...]       # without the batch dim when the model is batched
    reshape_to_scalar: bool = False


@dataclass(frozen=True)
class TritonConfig:
    name: str
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    instance_kind: str = "KIND_GPU"

    def to_pbtxt(self) -> str:
        lines = [f"name: {_quote(self.name)}", f"platform: {_quote(PLATFORM)}",
                 f"max_batch_size: {self.max_batch_size}"]
        for field, tensors in (("input", self.inputs), ("output", self.outputs)):
            lines.append(f"{field} [")
            for i, tensor in enumerate(tensors):
                lines += ["  {", f"    name: {_quote(tensor.name)}", f"    data_type: {tensor.data_type}",
                          f"    dims: [ {', '.join(map(str, tensor.dims))} ]"]
                if tensor.reshape_to_scalar:
                    lines.append("    reshape: { shape: [ ] }")
                lines.append("  }," if i < len(tensors) - 1 else "  }")
            lines.append("]")
        if self.max_batch_size > 0:
            lines.append("dynamic_batching { }")
        lines += ["instance_group [", "  {", f"    kind: {self.instance_kind}", "    count: 1", "  }", "]"]
        return "\n".join(lines) + "\n"


def sanitize_model_name(text: str) -> str:
    """A model name that is safe as a folder, in a URL and in Triton: letters, digits, `_`, `.`, `-`."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")
    return name or "model"


def triton_config(onnx_path: Path | str, name: str, *, max_batch_size: int = 8,
                  instance_kind: str = "gpu") -> TritonConfig:
    """The Triton ModelConfig for the ONNX model at `onnx_path`, from its graph's inputs and outputs."""
    import onnx

    if max_batch_size < 0:
        raise ExportError(f"--triton-max-batch {max_batch_size} must be 0 (no batching) or more")
    if instance_kind not in INSTANCE_KINDS:
        raise ExportError(f"unknown Triton instance kind {instance_kind!r}: use {' or '.join(INSTANCE_KINDS)}")
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as e:
        raise ExportError(f"cannot read ONNX model {onnx_path}: {first_line(e)}") from e
    initializers = {i.name for i in graph.initializer}
    inputs = [_tensor_dims(v) for v in graph.input if v.name not in initializers]
    outputs = [_tensor_dims(v) for v in graph.output]
    batched = max_batch_size > 0 and all(dims and dims[0] == -1 for _, _, dims in inputs + outputs)

    def tensors(items):
        result = []
        for tensor_name, data_type, dims in items:
            dims = dims[1:] if batched else dims
            result.append(TritonTensor(tensor_name, data_type, dims or (1,), reshape_to_scalar=not dims))
        return tuple(result)

    return TritonConfig(sanitize_model_name(name), max_batch_size if batched else 0, tensors(inputs),
                        tensors(outputs), INSTANCE_KINDS[instance_kind])


def write_triton_repository(onnx_path: Path | str, repository: Path | str, name: str, *, max_batch_size: int = 8,
                            instance_kind: str = "gpu", overwrite: bool = False) -> Path:
    """Write REPO/<name>/{config.pbtxt, 1/model.onnx[.data]} atomically; returns the model folder. An existing
    model folder is replaced only if zoo wrote it (export/atomic.py) or `overwrite`."""
    onnx_path, repository = Path(onnx_path), Path(repository).expanduser()
    if not onnx_path.is_file():
        raise ExportError(f"no ONNX model at {onnx_path} to put in the Triton repository")
    config = triton_config(onnx_path, name, max_batch_size=max_batch_size, instance_kind=instance_kind)
    model_dir = check_triton_target(repository, config.name, overwrite=overwrite)
    with atomic_output(model_dir, kind=TRITON_MODEL, overwrite=overwrite, option="--triton") as tmp:
        (tmp / VERSION).mkdir(parents=True)
        shutil.copyfile(onnx_path, tmp / VERSION / MODEL_FILE)
        data = onnx_path.with_name(onnx_path.name + EXTERNAL_DATA_SUFFIX)
        if data.is_file():  # the graph refers to it by this name, relative to its own folder
            shutil.copyfile(data, tmp / VERSION / (MODEL_FILE + EXTERNAL_DATA_SUFFIX))
        (tmp / CONFIG_FILE).write_text(config.to_pbtxt())
    return model_dir


def check_triton_target(repository: Path | str, name: str, *, overwrite: bool = False) -> Path:
    """REPO/<sanitized name>, after checking that it can be written: the repository is a folder (or can be
    created), the name fits the file system, and any model folder there is zoo's (or `overwrite`). Cheap, so
    `zoo export --triton` calls it before exporting anything."""
    repository = Path(repository).expanduser()
    if os.path.lexists(repository) and not repository.is_dir():
        raise ExportError(f"Triton repository {repository} is a file, not a folder; choose another --triton")
    name = sanitize_model_name(name)
    existing = next((p for p in (repository, *repository.parents) if p.is_dir()), Path("."))
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(name.encode()) > limit:
        raise ExportError(f"Triton model name {name[:40]}… is {len(name.encode())} bytes; this file system allows "
                          f"{limit}: give a shorter --triton-name")
    model_dir = repository / name
    check_target(model_dir, kind=TRITON_MODEL, overwrite=overwrite, option="--triton")
    return model_dir


def _tensor_dims(value) -> tuple[str, str, tuple[int, ...]]:
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return value.name, from_onnx(tensor_type.elem_type).triton, dims


def _quote(text: str) -> str:
    """A protobuf text-format string literal: printable ASCII as is, anything else as octal byte escapes."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(char if 32 <= byte < 127 and char not in '"\\' else f"\\{byte:03o}")
    return f'"{"".join(out)}"'
