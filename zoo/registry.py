"""Model registry: one builder per CLI name, registered once.

A builder is `fn(input_shape=..., num_classes=..., **config) -> keras.Model`. Families register themselves with
`@register_model` when `zoo.models` is imported; the lookup functions import it lazily, so this module (and
`zoo --help`) never pulls in TensorFlow.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from zoo.checks import check_positive
from zoo.errors import ZooError

TASKS = ("classification", "denoising", "style_transfer")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    default_input_shape: tuple[int | None, ...]
    task: str
    builder: Callable[..., Any]

    @property
    def options(self) -> list[str]:
        """The keyword options the builder accepts (what `create_model(name, **config)` may pass)."""
        return list(inspect.signature(self.builder).parameters)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, description: str, default_input_shape: tuple, task: str = "classification"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `fn` as the builder of model `name`. A second registration of `name` is a bug."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            other = _REGISTRY[name].builder
            raise ValueError(f"model {name!r} is already registered by {other.__module__}.{other.__qualname__}")
        _REGISTRY[name] = ModelSpec(name, description, tuple(default_input_shape), task, fn)
        return fn

    return decorator


def _load_families() -> None:
    importlib.import_module("zoo.models")


def list_models() -> list[ModelSpec]:
    _load_families()
    return sorted(_REGISTRY.values(), key=lambda spec: spec.name)


def get_model_spec(name: str) -> ModelSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        available = ", ".join(sorted(_REGISTRY))
        raise ZooError(f"unknown model {name!r}; available: {available} (see `zoo list`)") from None


def create_model(name: str, **config: Any):
    """Build model `name`; `input_shape` defaults to the spec's, other options to the builder's defaults.

    Checks what every builder shares (option names, `input_shape`, `num_classes`); the builder checks the rest.
    """
    spec = get_model_spec(name)
    unknown = sorted(set(config) - set(spec.options))
    if unknown:
        raise ZooError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; options: {', '.join(spec.options)}"
        )
    config.setdefault("input_shape", spec.default_input_shape)
    config["input_shape"] = _checked_input_shape(name, config["input_shape"])
    if "num_classes" in config:
        check_positive(f"model {name!r}: num_classes", config["num_classes"], integer=True)
    return spec.builder(**config)


def _checked_input_shape(model: str, shape: Any) -> tuple[int | None, ...]:
    """An (H, W, C) tuple; H and W may be None (fully convolutional models), C must be known."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 3:
        raise ZooError(f"model {model!r}: input_shape must be (height, width, channels), not {shape!r}")
    *spatial, channels = shape
    for value in spatial:
        if value is not None:
            check_positive(f"model {model!r}: input_shape height/width", value, integer=True)
    check_positive(f"model {model!r}: input_shape channels", channels, integer=True)
    return tuple(shape)
