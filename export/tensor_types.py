"""One table of tensor element types under the names each system gives them.

ONNX (`TensorProto.FLOAT`), ONNX Runtime (`"tensor(float)"`), NumPy (`float32`), the KServe v2 / Open Inference
Protocol (`"FP32"`) and Triton's model configuration (`TYPE_FP32`) each spell the same element type differently;
the serving protocol and the Triton repository writer both translate through this table so they cannot disagree.
BF16 has no NumPy dtype (None): such a model can be described, not fed.
"""
from __future__ import annotations

from dataclasses import dataclass

from export.errors import ExportError


@dataclass(frozen=True)
class TensorType:
    onnx: str          # onnx.TensorProto.DataType name
    ort: str           # onnxruntime NodeArg.type
    numpy: str | None  # numpy dtype name
    kserve: str        # KServe v2 datatype
    triton: str        # Triton ModelConfig DataType

    @property
    def itemsize(self) -> int | None:
        import numpy as np

        return None if self.numpy is None else np.dtype(self.numpy).itemsize


TYPES = (
    TensorType("BOOL", "tensor(bool)", "bool", "BOOL", "TYPE_BOOL"),
    TensorType("UINT8", "tensor(uint8)", "uint8", "UINT8", "TYPE_UINT8"),
    TensorType("UINT16", "tensor(uint16)", "uint16", "UINT16", "TYPE_UINT16"),
    TensorType("UINT32", "tensor(uint32)", "uint32", "UINT32", "TYPE_UINT32"),
    TensorType("UINT64", "tensor(uint64)", "uint64", "UINT64", "TYPE_UINT64"),
    TensorType("INT8", "tensor(int8)", "int8", "INT8", "TYPE_INT8"),
    TensorType("INT16", "tensor(int16)", "int16", "INT16", "TYPE_INT16"),
    TensorType("INT32", "tensor(int32)", "int32", "INT32", "TYPE_INT32"),
    TensorType("INT64", "tensor(int64)", "int64", "INT64", "TYPE_INT64"),
    TensorType("FLOAT16", "tensor(float16)", "float16", "FP16", "TYPE_FP16"),
    TensorType("FLOAT", "tensor(float)", "float32", "FP32", "TYPE_FP32"),
    TensorType("DOUBLE", "tensor(double)", "float64", "FP64", "TYPE_FP64"),
    TensorType("BFLOAT16", "tensor(bfloat16)", None, "BF16", "TYPE_BF16"),
    TensorType("STRING", "tensor(string)", "object", "BYTES", "TYPE_STRING"),
)

_BY_ORT = {t.ort: t for t in TYPES}
_BY_ONNX = {t.onnx: t for t in TYPES}
_BY_KSERVE = {t.kserve: t for t in TYPES}


def from_ort(type_string: str) -> TensorType:
    """The type of an ONNX Runtime input/output (`session.get_inputs()[i].type`)."""
    if type_string not in _BY_ORT:
        raise ExportError(f"tensor type {type_string} is not supported for serving (no KServe/Triton equivalent)")
    return _BY_ORT[type_string]


def from_onnx(elem_type: int) -> TensorType:
    """The type of an ONNX ValueInfo (`value.type.tensor_type.elem_type`, a TensorProto.DataType number)."""
    import onnx

    name = onnx.TensorProto.DataType.Name(elem_type)
    if name not in _BY_ONNX:
        raise ExportError(f"ONNX tensor type {name} has no Triton equivalent")
    return _BY_ONNX[name]


def from_kserve(datatype: str) -> TensorType | None:
    """The type a KServe v2 request names (None for a name the protocol does not define)."""
    return _BY_KSERVE.get(datatype)
