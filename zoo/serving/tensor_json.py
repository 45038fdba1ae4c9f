"""Tensors as JSON lists, both ways, strictly: the JSON half of the protocol's tensor data.

Decoding (`decode`): a request's `"data"` is either a flat list of exactly prod(shape) scalars or lists nested
exactly like the shape, never something in between (a [2, 3] tensor sent as [[1, 2], [3, 4], [5, 6]] has the right
count and the wrong meaning). The JSON types must fit the datatype: true/false only for BOOL, integers only for the
INT/UINT types, integers or decimals for the FP types; a bool is never a number here, although Python and NumPy
would take it as 0/1. Values must fit the type: integers in range, floats finite and within the type's range
(1e39 would become FP32 infinity). The walk goes level by level, so nesting deeper than the shape is refused
without recursion, and big flat lists stay fast: a type check and a range check are each one C-level pass.

Encoding (`encode`): strict JSON has no NaN or Infinity, so a non-finite output element goes out as the string
"NaN", "Infinity" or "-Infinity" (the spellings Python's float() and NumPy parse: `np.array(data, "float32")`,
which tritonclient's `as_numpy` does, reads them back as the same values); the response stays valid JSON for
every client, finite values keep their exact digits, and a client that wants raw floats asks for binary data.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from zoo.serving.errors import ProtocolError

_JSON_TYPES = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float)}
_WANT = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}


def decode(data: Any, name: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The array of `shape` and `dtype` that the JSON `data` of input `name` holds; ProtocolError (400) if it does
    not hold exactly that."""
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: \"data\" must be a list (flat or nested)")
    count = math.prod(shape)
    if len(shape) > 1 and data and type(data[0]) is list:
        leaves = _nested_leaves(data, name, shape)
    elif len(data) != count:
        raise ProtocolError(f"input {name!r} has {len(data)} elements but shape {list(shape)} needs {count}")
    else:
        leaves = data
    found = set(map(type, leaves))
    allowed = _JSON_TYPES[dtype.kind]
    if not found.issubset(allowed):
        if list in found:
            raise ProtocolError(f"input {name!r}: \"data\" is nested deeper than shape {list(shape)}; send a flat "
                                f"list of {count} values or lists nested exactly like the shape")
        raise ProtocolError(f"input {name!r}: \"data\" must hold {_WANT[dtype.kind]} for {datatype}, "
                            f"not {', '.join(sorted(_json_name(t) for t in found - set(allowed)))}")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow becomes inf, refused below
            # fromiter: half the time of np.array for floats; np.array for integers, where it raises on overflow
            array = np.fromiter(leaves, dtype, len(leaves)) if dtype.kind == "f" else np.array(leaves, dtype=dtype)
    except OverflowError:
        raise ProtocolError(f"input {name!r}: a value is out of range for {datatype}") from None
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(f"input {name!r}: a value is out of range for {datatype} (largest magnitude "
                            f"{float(np.finfo(dtype).max):.7g}; NaN and Infinity are not JSON numbers)")
    return array.reshape(shape)


def encode(value: np.ndarray) -> list:
    """The elements of `value`, flat, as JSON-ready Python scalars; non-finite floats as strings (see above)."""
    flat = value.reshape(-1)
    items = flat.tolist()
    if flat.dtype.kind == "f":
        for index in np.flatnonzero(~np.isfinite(flat)).tolist():
            x = items[index]
            items[index] = "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    return items


def _nested_leaves(data: list, name: str, shape: tuple[int, ...]) -> list:
    """The scalars of `data`, which must be lists nested exactly like `shape`, in row-major order."""
    level = [data]
    for axis, size in enumerate(shape):
        if set(map(type, level)) != {list}:
            raise ProtocolError(f"input {name!r}: nested \"data\" must match shape {list(shape)} exactly "
                                f"(a value that is not a list where axis {axis} needs a list of {size})")
        if set(map(len, level)) != {size}:
            found = next(len(entry) for entry in level if len(entry) != size)
            raise ProtocolError(f"input {name!r}: nested \"data\" must match shape {list(shape)} exactly "
                                f"(a list of {found} where axis {axis} needs {size}: ragged or wrongly nested)")
        level = list(itertools.chain.from_iterable(level))
    return level


def _json_name(kind: type) -> str:
    return {bool: "true/false", int: "integers", float: "decimals", str: "strings", list: "lists",
            dict: "objects", type(None): "null"}.get(kind, kind.__name__)
