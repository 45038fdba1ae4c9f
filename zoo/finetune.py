"""`finetune(base, ...)`: transfer a trained classifier to a new dataset, respecting BatchNorm.

The base (a zoo run or any `.keras` classifier with one square image input) is cut into a backbone and a head:
- the cut is the input of the base's classifier layer (the last layer with weights, found by walking back over
  trailing weightless layers such as Softmax or Dropout), or the output of `--cut LAYER`;
- a new head replaces what follows the cut: global average pooling for a 4-D feature map (Flatten for other
  ranks), then a Dense layer with one logit per class of the new dataset. `keep_head=True` keeps the base's own
  head instead (same classes, new domain), which then must have as many outputs as the dataset has classes.

Training has two phases, like `zoo train` (Adam, warm-up then cosine decay, shifts as augmentation):
1. head: the backbone is frozen (`trainable=False`), so its BN layers run in inference mode and keep their
   statistics; only the head learns, at `lr`.
2. fine-tune (`epochs_finetune > 0`): everything learns, at `finetune_lr` (default lr/10), except, with
   `bn_mode="frozen"`, the backbone's BN layers: they stay `trainable=False`, so they keep normalising with the
   base's moving statistics, never update them, and keep γ and β (each BN stays the fixed affine map that
   export folds). With `bn_mode="train"` BN normalises with each batch's statistics and updates its moving
   averages, as in ordinary training. Frozen is the safe default for small target sets, where batch statistics
   are noisy (measurements: docs/training.md, from benchmarks/finetune_bn.py).

Why `trainable=False` and not the Keras 2 idiom `backbone(x, training=False)`: in Keras 3 (checked on 3.15) a
functional model passes its own `training` flag to every nested call, so `fit` overrides that `False` and BN's
moving statistics move; `trainable=False` is what Keras 3's BatchNormalization obeys (`training and trainable`).

The run directory gets model.keras, history.csv (both phases, epochs numbered on), metrics.json and curves.png,
written as one unit like `zoo train`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import keras

import zoo.layers  # noqa: F401 - registers zoo's layers, so zoo's `.keras` files load in safe_mode
from zoo.classifier import accuracy, is_classifier_for, square_image_input
from zoo.errors import ZooError

BN_MODES = ("frozen", "train")
RUN_FILES = ("model.keras", "history.csv", "metrics.json", "curves.png")
FINETUNE_LR_FACTOR = 0.1


def finetune(
    base: Path | str,
    *,
    dataset: str,
    out: Path,
    cut: str | None = None,
    keep_head: bool = False,
    epochs_head: int = 20,
    epochs_finetune: int = 0,
    lr: float = 3e-3,
    finetune_lr: float | None = None,
    bn_mode: str = "frozen",
    batch_size: int = 32,
    seed: int = 0,
    augment: bool = True,
    verbose: int | str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune `base` (a run directory or a `.keras` file) on `dataset`; write the run into `out` and return the
    metrics (also in metrics.json). `overwrite`: write into `out` even if zoo did not write it (zoo/runs.py)."""
    from export.loading import load_keras
    from zoo.adabn import bn_layers
    from zoo.data import load_dataset, make_pipeline, steps_per_epoch
    from zoo.runs import (check_run_target, plot_curves, resolve_source, run_directory, write_history,
                          write_metrics)
    from zoo.checks import check_positive
    from zoo.train import compile_classifier, dataset_facts

    started = time.perf_counter()
    if bn_mode not in BN_MODES:
        raise ZooError(f"bn-mode must be one of {', '.join(BN_MODES)}, not {bn_mode!r}")
    if keep_head and cut is not None:
        raise ZooError("--keep-head keeps the base's own head, so it cannot be combined with --cut")
    check_positive("epochs_head", epochs_head, integer=True)
    if isinstance(epochs_finetune, bool) or not isinstance(epochs_finetune, int) or epochs_finetune < 0:
        raise ZooError(f"epochs_finetune must be a non-negative integer, not {epochs_finetune!r}")
    finetune_lr = lr * FINETUNE_LR_FACTOR if finetune_lr is None else finetune_lr
    for name, value in (("lr", lr), ("finetune_lr", finetune_lr)):
        check_positive(name, value)
    check_positive("batch_size", batch_size, integer=True)

    source = resolve_source(Path(base))
    out = Path(out).expanduser()
    check_run_target(out, RUN_FILES, overwrite=overwrite, sources=[source.keras_path])
    base_model = load_keras(source.keras_path)
    side, channels = square_image_input(base_model, "finetune")
    features, tail = split_model(base_model, cut)
    data = load_dataset(dataset, seed=seed)
    if keep_head and not is_classifier_for(base_model, data.num_classes):
        raise ZooError(f"the base's head has {base_model.outputs[0].shape[-1]} outputs but {data.name} has "
                       f"{data.num_classes} classes; drop --keep-head to train a new head for them")

    with run_directory(out, RUN_FILES, overwrite=overwrite, sources=[source.keras_path]) as staging:
        keras.utils.set_random_seed(seed)
        backbone = keras.Model(base_model.inputs, features, name="backbone")
        model = _with_head(backbone, tail if keep_head else None, data.num_classes, side, channels)
        from_logits = not (keep_head and _ends_in_softmax(tail))
        def pipeline(split, **epochs):
            return make_pipeline(split, image_size=side, channels=channels, batch_size=batch_size,
                                 training=split is data.train, seed=seed, augment=augment,
                                 flip=data.mirror_invariant, **epochs)

        val_ds, test_ds = pipeline(data.val), pipeline(data.test)
        steps = steps_per_epoch(data.train, batch_size)
        fit = dict(validation_data=val_ds, steps_per_epoch=steps, shuffle=False, verbose=verbose)

        backbone.trainable = False
        compile_classifier(model, lr, steps=epochs_head * steps, from_logits=from_logits)
        history = model.fit(pipeline(data.train, epochs=epochs_head), epochs=epochs_head, **fit).history
        head_test = accuracy(model, test_ds)
        trainable = {"head": _count(model.trainable_weights)}
        if epochs_finetune:
            backbone.trainable = True
            if bn_mode == "frozen":
                for layer in bn_layers(backbone):
                    layer.trainable = False
            total = epochs_head + epochs_finetune
            compile_classifier(model, finetune_lr, steps=epochs_finetune * steps, from_logits=from_logits)
            more = model.fit(pipeline(data.train, epochs=total, first_epoch=epochs_head), initial_epoch=epochs_head,
                             epochs=total, **fit).history
            history = {key: history[key] + more[key] for key in history}
            trainable["finetune"] = _count(model.trainable_weights)
        write_history(staging / "history.csv", history)
        test = model.evaluate(test_ds, verbose=0, return_dict=True)
        model.save(staging / "model.keras")
        plot_curves(history, staging / "curves.png")
        metrics = {
            "model": "finetune",
            "base": str(source.keras_path),
            "base_model": source.metadata.get("zoo_model", base_model.name),
            "dataset": data.name,
            "cut": cut or features._keras_history.operation.name,
            "keep_head": keep_head,
            "bn_mode": bn_mode,
            "outputs": "logits" if from_logits else "probabilities",
            "test_accuracy": float(test["accuracy"]),
            "test_loss": float(test["loss"]),
            "head_test_accuracy": head_test,
            "val_accuracy": float(history["val_accuracy"][-1]),
            "epochs_head": epochs_head,
            "epochs_finetune": epochs_finetune,
            "lr": lr,
            "finetune_lr": finetune_lr,
            "trainable_params": trainable,
            "params": int(model.count_params()),
            "batch_size": batch_size,
            "seed": seed,
            "augment": augment,
            "image_size": side,
            "channels": channels,
            **dataset_facts(data, started),
        }
        write_metrics(staging, metrics)
    return metrics


def split_model(model: keras.Model, cut: str | None) -> tuple[Any, list]:
    """(feature tensor at the cut, the chain of layers after it up to the output; empty for `--cut`)."""
    if cut is not None:
        names = [layer.name for layer in model.layers]
        if cut not in names:
            raise ZooError(f"no layer {cut!r} in the model to cut at; its layers are {', '.join(names[1:])}")
        layer = model.get_layer(cut)
        if layer is model.layers[-1] or isinstance(layer, keras.layers.InputLayer):
            raise ZooError(f"cutting at {cut!r} leaves no backbone and head; cut at a layer inside the model")
        if len(layer._inbound_nodes) != 1:
            raise ZooError(f"layer {cut!r} is used {len(layer._inbound_nodes)} times; cut at a layer used once")
        return layer.output, []
    if len(model.outputs) != 1:
        raise ZooError(f"the model has {len(model.outputs)} outputs; finetune takes a classifier with one")
    tail = []
    layer = model.outputs[0]._keras_history.operation
    while True:
        tail.insert(0, layer)
        inbound = layer._inbound_nodes[0].input_tensors if len(layer._inbound_nodes) == 1 else []
        if len(inbound) != 1:
            raise ZooError(f"cannot find the classifier layer behind {layer.name!r}; choose the cut with --cut LAYER")
        if layer.weights:  # the classifier layer: the backbone ends at its input
            return inbound[0], tail
        layer = inbound[0]._keras_history.operation
        if isinstance(layer, keras.layers.InputLayer):
            raise ZooError("the model has no layer with weights to replace; choose the cut with --cut LAYER")


def _with_head(backbone: keras.Model, tail: list | None, classes: int, side: int, channels: int) -> keras.Model:
    inputs = keras.Input((side, side, channels), name=backbone.inputs[0].name)
    x = backbone(inputs)
    if tail is not None:
        for layer in tail:
            x = layer(x)
        return keras.Model(inputs, x, name="finetuned")
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    elif len(x.shape) != 2:
        x = keras.layers.Flatten(name="head_flatten")(x)
    logits = keras.layers.Dense(classes, name="head_logits")(x)
    return keras.Model(inputs, logits, name="finetuned")


def _ends_in_softmax(tail: list) -> bool:
    """Whether the kept head outputs probabilities (a softmax, followed only by weightless layers)."""
    return any(isinstance(layer, keras.layers.Softmax) or getattr(layer, "activation", None) is keras.activations.softmax
               for layer in tail)


def _count(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))
