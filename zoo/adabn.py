"""BN recalibration (AdaBN, Li et al. 2016): re-estimate every BatchNormalization's moving mean and variance on
unlabelled target-domain images; nothing else changes.

Statistics are exact population averages over all the given batches (every pixel of every image counts once,
accumulated in float64), not momentum updates. BN layers are visited in the model's layer order (topological for
functional models, nested models included): the inputs of BN k are recorded with BN 1..k−1 already recalibrated and
the model in inference mode, so each layer's new statistics describe exactly what it will see at inference.
That costs one pass over the batches per BN layer (cnn_bn: 2; ResNet50: 53).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

import zoo.layers  # noqa: F401 - registers zoo's layers, so zoo's `.keras` files load in safe_mode
from zoo.checks import check_positive
from zoo.classifier import accuracy, is_classifier_for, square_image_input
from zoo.errors import ZooError


@dataclass
class LayerShift:
    layer: str
    channels: int
    mean_shift: float  # mean over channels of |new mean − old mean| / sqrt(old var)
    var_ratio: float  # geometric mean over channels of new var / old var

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "channels": self.channels, "mean_shift": self.mean_shift,
                "var_ratio": self.var_ratio}


def bn_layers(model) -> list:
    """Every BatchNormalization in `model`, nested models included, in topological order (`Model.layers` is
    topological for functional and Sequential models; `_flatten_layers` is not)."""
    import keras

    found, seen = [], set()

    def walk(layer) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            for sublayer in layer.layers:
                walk(sublayer)
        else:  # a custom layer holding sublayers
            for sublayer in layer._flatten_layers(include_self=False, recursive=False):
                walk(sublayer)

    walk(model)
    return found


def recalibrate_bn(model, batches: Iterable[np.ndarray]) -> list[LayerShift]:
    """Recalibrate `model`'s BN layers in place from `batches` (re-iterable: one pass per BN layer)."""
    layers = bn_layers(model)
    if not layers:
        raise ZooError("the model has no BatchNormalization layer to recalibrate")
    shifts = []
    for layer in layers:
        old_mean = np.asarray(layer.moving_mean, dtype=np.float64)
        old_var = np.asarray(layer.moving_variance, dtype=np.float64)
        mean, var = _input_statistics(model, layer, batches)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(var.astype(np.float32))
        shifts.append(LayerShift(
            layer=layer.name,
            channels=len(mean),
            mean_shift=float(np.mean(np.abs(mean - old_mean) / np.sqrt(old_var + layer.epsilon))),
            var_ratio=float(np.exp(np.mean(np.log((var + layer.epsilon) / (old_var + layer.epsilon))))),
        ))
    return shifts


def _input_statistics(model, layer, batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Population mean and variance, per channel, of what `layer` receives when `model` runs in inference mode."""
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    totals: dict[str, Any] = {"n": 0, "sum": 0.0, "sumsq": 0.0, "shift": None}
    original_call = layer.call

    def recording_call(inputs, *args, **kwargs):
        x = np.asarray(inputs, dtype=np.float64)
        x = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        if totals["shift"] is None:  # shifted sums keep E[x²] − E[x]² accurate when |mean| ≫ std
            totals["shift"] = x.mean(axis=0)
        centred = x - totals["shift"]
        totals["n"] += len(x)
        totals["sum"] = totals["sum"] + centred.sum(axis=0)
        totals["sumsq"] = totals["sumsq"] + np.square(centred).sum(axis=0)
        return original_call(inputs, *args, **kwargs)

    layer.call = recording_call  # eager calls go through the instance attribute
    try:
        for batch in batches:
            model(batch, training=False)
    finally:
        del layer.call
    if totals["n"] == 0:
        raise ZooError("no batches to recalibrate from; give a dataset with images")
    mean_centred = totals["sum"] / totals["n"]
    var = np.maximum(totals["sumsq"] / totals["n"] - np.square(mean_centred), 0.0)
    return totals["shift"] + mean_centred, var


def recalibrate_file(src, *, dataset: str, out, batches: int = 20, batch_size: int = 64, seed: int = 0,
                     evaluate: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Recalibrate the `.keras` model at `src` on `dataset`'s training images (labels unused) and save it to `out`.

    With `evaluate`, a classifier whose class count matches the dataset is also scored on the dataset's test split
    before and after (a measurement, not part of the recalibration). `out` is a `.keras` file or a folder (for
    SRC_adabn.keras in it, as every command's --out is a folder); it replaces only a file zoo wrote
    (export/atomic.py) unless `overwrite`; it is never `src`."""
    from export.atomic import atomic_output, check_target
    from export.loading import load_keras
    from zoo.data import load_dataset, make_pipeline

    out = Path(out).expanduser()
    if out.suffix != ".keras":
        if out.suffix and not out.is_dir():
            raise ZooError(f"--out {out} must end in .keras, or be a folder (for {Path(src).stem}_adabn.keras)")
        out = out / f"{Path(src).stem}_adabn.keras"  # a folder, like every other command's --out
    destination = {"overwrite": overwrite, "sources": [src]}
    check_target(out, **destination)
    for name, value in (("batches", batches), ("batch_size", batch_size)):
        check_positive(name, value, integer=True)
    model = load_keras(src)
    side, channels = square_image_input(model, "recalibrate-bn")
    data = load_dataset(dataset, seed=seed)

    def pipeline(split, training):
        return make_pipeline(split, image_size=side, channels=channels, batch_size=batch_size,
                             training=training, seed=seed)

    images = [x.numpy() for x, _ in pipeline(data.train, True).take(batches)]
    scored = evaluate and is_classifier_for(model, data.num_classes)
    before = accuracy(model, pipeline(data.test, False)) if scored else None
    shifts = recalibrate_bn(model, images)
    after = accuracy(model, pipeline(data.test, False)) if scored else None
    with atomic_output(out, suffix=".keras", **destination) as tmp:  # Keras saves only to *.keras names
        model.save(tmp)
    return {"source": str(src), "out": str(out), "dataset": data.name, "images": int(sum(len(b) for b in images)),
            "layers": [s.to_dict() for s in shifts], "test_accuracy_before": before, "test_accuracy_after": after}

