"""The KServe v2 / Open Inference Protocol, REST flavour: model metadata, request parsing and validation, and
response encoding, including the binary tensor data extension. No web framework here: bytes in, bytes out, so the
rules are testable on their own and the app (zoo/serving/app.py) stays a thin router.

Request (`POST /v2/models/NAME/infer`):

    {"id": "42", "parameters": {...},
     "inputs": [{"name": "image", "shape": [1, 16, 16, 1], "datatype": "FP32", "data": [...flat or nested...]}],
     "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]}

Binary tensor data extension: the JSON header is followed by raw little-endian tensor bytes. The header's length is
in the HTTP header `Inference-Header-Content-Length`; an input whose data is in the binary part has
`"parameters": {"binary_data_size": N}` instead of `"data"`, and the binary parts follow in the order of those
inputs. An output asked for with `"binary_data": true` (or every output, with the request parameter
`"binary_data_output": true`) comes back the same way, with the response's JSON length in the same HTTP header.

Every request is checked against the model's signature before anything runs; a request that does not fit is a
ProtocolError (HTTP 400) whose message names the input and what is wrong with it. Work per request is bounded before
it is done: the rows an input declares are checked against `max_rows` (413) before its data is decoded; JSON is
strict (no NaN/Infinity tokens) and nesting too deep for the parser is a 400, not a RecursionError; JSON tensor
data is decoded and encoded by zoo/serving/tensor_json.py. Binary data is read in place (a NumPy view of the body,
no copy), so a large binary request costs its body once.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.tensor_types import TensorType, from_kserve
from zoo.serving import tensor_json
from zoo.serving.errors import ProtocolError

__all__ = ["HEADER_LENGTH", "ModelSpec", "ProtocolError", "TensorSpec", "encode_infer_response",
           "parse_infer_request"]

HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "onnxruntime_onnx"
ROWS_FLAG = "zoo serve --max-request-rows"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the protocol describes it: -1 for a dynamic dimension."""

    name: str
    type: TensorType
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.type.kserve, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    version: str = "1"

    @property
    def batchable(self) -> bool:
        """Whether requests can be stacked along axis 0: every input and output has a dynamic leading dim."""
        return all(t.shape and t.shape[0] == -1 for t in self.inputs + self.outputs)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [self.version], "platform": PLATFORM,
                "inputs": [t.metadata() for t in self.inputs], "outputs": [t.metadata() for t in self.outputs]}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """The batch size (leading dim of the first input; validation made all inputs agree when batchable)."""
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1


def parse_infer_request(body: bytes | bytearray, spec: ModelSpec, header_length: str | None = None, *,
                        max_rows: int | None = None) -> InferRequest:
    """Parse and validate one inference request (JSON, or JSON header + binary tensors) against `spec`.

    `max_rows`: most rows (axis 0) an input with a dynamic leading dim may declare; more is a 413, refused from the
    declared shape before that input's data is decoded."""
    header, binary = _split_body(body, header_length)
    payload = _strict_json(header)
    if not isinstance(payload, dict):
        raise ProtocolError("request body must be a JSON object with an \"inputs\" list")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("\"id\" must be a string")
    parameters = _object(payload.get("parameters"), "request \"parameters\"")
    entries = payload.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("request needs a non-empty \"inputs\" list")

    expected = {t.name: t for t in spec.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError("each input must be an object with a \"name\"")
        name = entry["name"]
        if name not in expected:
            raise ProtocolError(f"unknown input {name!r}; the model's inputs are {_names(spec.inputs)}")
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        tensor, offset = _parse_input(entry, expected[name], binary, offset, max_rows)
        inputs[name] = tensor
    if offset != len(binary):
        raise ProtocolError(f"the request has {len(binary)} bytes of binary data but its inputs' binary_data_size "
                            f"add up to {offset}")
    missing = [n for n in expected if n not in inputs]
    if missing:
        raise ProtocolError(f"missing input(s) {', '.join(map(repr, missing))}; the model's inputs are "
                            f"{_names(spec.inputs)}")
    if spec.batchable:
        rows = {n: int(a.shape[0]) for n, a in inputs.items()}
        if len(set(rows.values())) > 1:
            raise ProtocolError(f"inputs disagree on the batch size (axis 0): {rows}")
    return InferRequest(inputs, _requested_outputs(payload.get("outputs"), parameters, spec), request_id, parameters)


def encode_infer_response(spec: ModelSpec, request: InferRequest,
                          results: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """(body, extra HTTP headers) of the response to `request`: the requested outputs (all, in model order, when it
    asked for none), each as JSON data or, when asked, as binary data after the JSON header."""
    types = {t.name: t.type for t in spec.outputs}
    outputs, blobs = [], []
    for requested in request.outputs:
        value = np.asarray(results[requested.name])
        entry: dict[str, Any] = {"name": requested.name, "datatype": types[requested.name].kserve,
                                 "shape": list(value.shape)}
        if requested.binary:
            blob = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor_json.encode(value)
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": spec.name, "model_version": spec.version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return header, {}
    return header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}


def _strict_json(header: bytes | bytearray) -> Any:
    """json.loads, strictly: NaN/Infinity tokens and nesting too deep for Python's parser (it recurses, one level
    per bracket; ~1,000 levels) are a 400, like any other malformed JSON."""
    try:
        return json.loads(header, parse_constant=_no_constant)
    except RecursionError:
        raise ProtocolError(f"request JSON is nested too deeply (more than ~{sys.getrecursionlimit()} levels); "
                            f"tensor data nests at most as deep as the tensor's rank") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"request body is not valid JSON: {e}") from None


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number (strict JSON has no NaN or Infinity)")


def _split_body(body: bytes | bytearray, header_length: str | None) -> tuple[bytes | bytearray, memoryview]:
    """(JSON header, binary part): the binary part is a view of `body`, not a copy."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} is {header_length!r}; it must be the JSON header's length in bytes, "
                            f"at most the body's {len(body)}")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _parse_input(entry: dict, spec: TensorSpec, binary: memoryview, offset: int,
                 max_rows: int | None) -> tuple[np.ndarray, int]:
    name = entry["name"]
    datatype = entry.get("datatype")
    if datatype != spec.type.kserve:
        known = "" if from_kserve(str(datatype)) else " (not a KServe v2 datatype)"
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}{known}; the model expects {spec.type.kserve}")
    if spec.type.numpy in (None, "object"):
        raise ProtocolError(f"input {name!r}: datatype {datatype} is not supported by this server")
    shape = _shape(entry.get("shape"), spec)
    if max_rows is not None and spec.shape and spec.shape[0] == -1 and shape[0] > max_rows:
        raise ProtocolError(f"input {name!r} has {shape[0]} rows (axis 0 of shape {list(shape)}); this server takes "
                            f"at most {max_rows} rows per request ({ROWS_FLAG}): split the request", 413)
    count = math.prod(shape)
    dtype = np.dtype(spec.type.numpy)
    size = _object(entry.get("parameters"), f"input {name!r} \"parameters\"").get("binary_data_size")
    if size is not None:
        if "data" in entry:
            raise ProtocolError(f"input {name!r} has both \"data\" and parameters.binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise ProtocolError(f"input {name!r}: binary_data_size is {size} bytes but shape {list(shape)} of "
                                f"{datatype} needs {count * dtype.itemsize}")
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the end of the binary data "
                                f"({len(binary) - offset} bytes left)")
        array = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        if array.dtype != dtype:  # a big-endian host: the one case that needs a copy
            array = array.astype(dtype)
        return array.reshape(shape), offset + size
    if "data" not in entry:
        raise ProtocolError(f"input {name!r} has no \"data\" (nor parameters.binary_data_size)")
    return tensor_json.decode(entry["data"], name, spec.type.kserve, dtype, shape), offset


def _shape(value: Any, spec: TensorSpec) -> tuple[int, ...]:
    name = spec.name
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ProtocolError(f"input {name!r}: \"shape\" must be a list of integers")
    if len(value) != len(spec.shape):
        raise ProtocolError(f"input {name!r} has shape {value} of rank {len(value)}; the model expects rank "
                            f"{len(spec.shape)}, shape {list(spec.shape)}")
    if any(d < 1 for d in value):
        raise ProtocolError(f"input {name!r} has shape {value}; every dimension must be at least 1")
    for axis, (given, want) in enumerate(zip(value, spec.shape)):
        if want != -1 and given != want:
            raise ProtocolError(f"input {name!r} has shape {value}; the model expects {list(spec.shape)} "
                                f"(axis {axis} must be {want})")
    return tuple(value)


def _requested_outputs(value: Any, parameters: dict, spec: ModelSpec) -> list[RequestedOutput]:
    default_binary = parameters.get("binary_data_output", False) is True
    if value is None:
        return [RequestedOutput(t.name, default_binary) for t in spec.outputs]
    if not isinstance(value, list) or not value:
        raise ProtocolError("\"outputs\" must be a non-empty list of {\"name\": ...} objects")
    known = {t.name for t in spec.outputs}
    requested = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError("each requested output must be an object with a \"name\"")
        if entry["name"] not in known:
            raise ProtocolError(f"unknown output {entry['name']!r}; the model's outputs are {_names(spec.outputs)}")
        params = _object(entry.get("parameters"), f"output {entry['name']!r} \"parameters\"")
        binary = params.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {entry['name']!r}: binary_data must be true or false")
        requested.append(RequestedOutput(entry["name"], binary))
    return requested


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _names(tensors: tuple[TensorSpec, ...]) -> str:
    return ", ".join(repr(t.name) for t in tensors)
