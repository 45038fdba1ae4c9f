"""Rebuild a functional model with every layer config edited: the one mechanism behind synchronized BN
(`--strategy mirrored`) and the float32 copy saved after `--mixed-precision` training."""

from __future__ import annotations

from typing import Any, Callable


def rebuild(model: Any, edit: Callable[[dict[str, Any]], bool]):
    """A copy of `model` with `edit(layer_entry)` applied to every layer entry of its config, nested models
    included (`layer_entry` is {"class_name", "config", ...}; `edit` changes it in place and returns whether it
    did). Same weights; `model` itself when nothing changed."""

    def walk(config: Any) -> int:
        changed = 0
        if isinstance(config, dict):
            if "class_name" in config and isinstance(config.get("config"), dict):
                changed += bool(edit(config))
            changed += sum(walk(value) for value in config.values())
        elif isinstance(config, list):
            changed += sum(walk(value) for value in config)
        return changed

    config = model.get_config()
    if walk(config["layers"]) == 0:
        return model
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy
