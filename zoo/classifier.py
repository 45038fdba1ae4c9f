"""What zoo asks of a user's `.keras` classifier, shared by `recalibrate-bn` and `finetune`: one square image
input, and (to be scored) logits with one column per class of the dataset."""

from __future__ import annotations

import numpy as np

from zoo.errors import ZooError


def square_image_input(model, command: str) -> tuple[int, int]:
    """(side, channels) of the model's single (H, H, C) input; a ZooError naming `command` otherwise."""
    shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else ()
    if len(shape) != 3 or shape[0] is None or shape[0] != shape[1]:
        raise ZooError(f"{command} needs a model with one square image input (H, H, C), not {shape or 'several inputs'}")
    return shape[0], shape[2]


def is_classifier_for(model, classes: int) -> bool:
    return len(model.outputs) == 1 and len(model.outputs[0].shape) == 2 and model.outputs[0].shape[-1] == classes


def accuracy(model, dataset) -> float:
    """Top-1 accuracy of `model` (inference mode) over a tf.data dataset of (images, labels)."""
    correct = total = 0
    for x, y in dataset:
        logits = np.asarray(model(x, training=False))
        correct += int((logits.argmax(axis=-1) == y.numpy()).sum())
        total += len(logits)
    return correct / total
