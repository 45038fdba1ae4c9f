"""Dataset modifiers, chained after a spec with `+`: a domain shift (`digits+invert`, zoo/data/shifts.py), a class
subset (`digits+classes=5-9`) or a label budget (`digits+classes=5-9+per-class=10`).

They build the settings transfer learning and BN recalibration are measured in: pretrain on some classes,
fine-tune on others with few labels, or test on a shifted domain. Modifiers apply left to right.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from zoo.data.dataset import ImageDataset, Split, subset
from zoo.data.shifts import SHIFTS, apply_shift
from zoo.errors import ZooError

MODIFIER_SPECS = ("SPEC+" + "|".join(SHIFTS), "SPEC+classes=A-B,C", "SPEC+per-class=N")


def apply_modifier(data: ImageDataset, modifier: str, *, seed: int) -> ImageDataset:
    name, equals, argument = modifier.partition("=")
    if name == "classes" and equals:
        modified = select_classes(data, parse_classes(argument, data))
    elif name == "per-class" and equals:
        modified = limit_per_class(data, parse_count(argument), seed=seed)
    elif name in SHIFTS and not equals:
        modified = apply_shift(data, name, seed=seed)
    else:
        raise ZooError(f"unknown dataset modifier {modifier!r}; use one of: {', '.join(MODIFIER_SPECS)}")
    return replace(modified, name=f"{data.name}+{modifier}")


def parse_classes(text: str, data: ImageDataset) -> list[int]:
    """`5-9`, `0,2,4` or `0-2,7` → sorted class indices of `data`, each once."""
    chosen: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ZooError(f"classes={text!r}: write class indices like 5-9 or 0,2,4") from None
        if not 0 <= first <= last < data.num_classes:
            raise ZooError(f"classes={text!r}: {data.name} has classes 0-{data.num_classes - 1}")
        chosen.update(range(first, last + 1))
    if len(chosen) < 2:
        raise ZooError(f"classes={text!r}: a classifier needs at least 2 classes")
    return sorted(chosen)


def parse_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ZooError(f"per-class={text!r}: give the number of training images per class, e.g. per-class=10")
    return count


def select_classes(data: ImageDataset, classes: list[int]) -> ImageDataset:
    """Only the images of `classes`, relabelled 0..k−1 in that order; class names kept."""
    relabel = np.full(data.num_classes, -1, np.int64)
    relabel[classes] = np.arange(len(classes))

    def keep(split: Split) -> Split:
        mask = relabel[split.y] >= 0
        return Split(split.x[mask], relabel[split.y[mask]])

    parts = {part: keep(getattr(data, part)) for part in ("train", "val", "test")}
    empty = [part for part, split in parts.items() if len(split) == 0]
    if empty:
        raise ZooError(f"{data.name}: no {empty[0]} images of classes {classes}")
    return replace(data, class_names=[data.class_names[i] for i in classes], **parts)


def limit_per_class(data: ImageDataset, count: int, *, seed: int) -> ImageDataset:
    """At most `count` training images per class (a seeded, stratified choice); val and test stay whole, so
    the scores of different label budgets are comparable."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(data.train.y == label))[:count] for label in np.unique(data.train.y)]
    return replace(data, train=subset(data.train, np.sort(np.concatenate(keep))))
