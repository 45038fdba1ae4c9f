"""Argument checks written once, so every command, builder and server flag words a bad value the same way:
"batch_size must be a positive integer, not 0". No heavy imports: the CLI and the registry use it."""

from __future__ import annotations

import math
from typing import Any

from zoo.errors import ZooError


def check_positive(name: str, value: Any, *, integer: bool = False) -> Any:
    """`value` when it is a positive integer (`integer`) or a finite positive number; a ZooError naming `name`."""
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (math.isfinite(value) and value > 0):
        raise ZooError(f"{name} must be a positive {'integer' if integer else 'finite number'}, not {value!r}")
    return value


def check_input_side(model: str, input_shape: tuple, min_side: int, *, known: bool = True) -> None:
    """Raise unless `input_shape`'s height and width are at least `min_side` (and known, with `known`; without it a
    None side is a dynamic size and passes): the builders' one input-size check."""
    sides = tuple(input_shape[:2])
    if (known and None in sides) or any(side is not None and side < min_side for side in sides):
        need = "known and >= " if known else ">= "
        raise ZooError(f"model {model!r}: input height and width must be {need}{min_side}, not {input_shape}")
