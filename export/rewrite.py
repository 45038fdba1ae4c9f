"""Walking and editing a Keras model's config: the one mechanism behind BN folding's graph edits
(export/fold_bn.py), the TFLite export's layer swap (export/tflite.py), synchronized BN and the float32 copy after
mixed-precision training (zoo/distribute.py)."""

from __future__ import annotations

from typing import Any, Callable


def walk(obj: Any, is_match: Callable[[Any], bool], fn: Callable[[Any], Any], *, into_matches: bool = False) -> None:
    """Call fn(node) on every node of a nested config structure (dicts, lists, tuples) for which is_match(node);
    with `into_matches`, also look inside the nodes that matched (a nested model's layers)."""
    if is_match(obj):
        fn(obj)
        if not into_matches:
            return
    if isinstance(obj, dict):
        for value in obj.values():
            walk(value, is_match, fn, into_matches=into_matches)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            walk(value, is_match, fn, into_matches=into_matches)


def is_layer_entry(obj: Any) -> bool:
    """A layer's entry in a model config: {"class_name", "config", ...}."""
    return isinstance(obj, dict) and "class_name" in obj and isinstance(obj.get("config"), dict)


def rebuild(model: Any, edit: Callable[[dict[str, Any]], bool]):
    """A copy of `model` with `edit(layer_entry)` applied to every layer entry of its config, nested models
    included (`edit` changes the entry in place and returns whether it did). Same weights; `model` itself when
    nothing changed."""
    config = model.get_config()
    changed: list[bool] = []
    walk(config["layers"], is_layer_entry, lambda entry: changed.append(bool(edit(entry))), into_matches=True)
    if not any(changed):
        return model
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy
