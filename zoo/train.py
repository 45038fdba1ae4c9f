"""`train(model_name, ...)`: fit a registered classifier on a dataset and write a run directory.

A run directory holds model.keras, history.csv, metrics.json and curves.png. Everything is written into a
hidden staging directory next to `out` and moved in only when training succeeded, so a failure or Ctrl-C leaves
`out` as it was. Every epoch is also checkpointed beside `out` (zoo/checkpoint.py), so `resume=True` after a crash
or kill continues from the last completed epoch.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

import keras

import zoo
from zoo.checkpoint import EpochCheckpoint, checkpoint_dir, load_checkpoint, remove_checkpoint
from zoo.data import load_dataset, make_pipeline, steps_per_epoch
from zoo.distribute import as_float32, make_strategy, mixed_policy, synchronize_bn
from zoo.recipes import DEFAULT, compile_with, recipe_for
from zoo.errors import ZooError
from zoo.checks import check_positive
from zoo.registry import create_model, get_model_spec
from zoo.runs import plot_curves, run_directory, write_history, write_metrics

RUN_FILES = ("model.keras", "history.csv", "metrics.json", "curves.png")


def train(
    model_name: str,
    *,
    dataset: str = "digits",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    out: Path,
    image_size: int | None = None,
    augment: bool = True,
    verbose: int | str = "auto",
    model_config: dict[str, Any] | None = None,
    resume: bool = False,
    strategy: str = "none",
    recipe: str = "default",
    optimizer: str | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    label_smoothing: float | None = None,
    early_stopping: int | None = None,
    keep_best: bool = False,
    mixed_precision: bool = False,
    jit: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train `model_name` and write the run into `out`; returns the metrics (also in metrics.json).

    `recipe` ("default" or "paper", zoo/recipes.py) sets the optimizer, schedule, regularisation, batch size and
    epochs; the other arguments override single fields. The default warms the learning rate up over the first
    10 % of the steps, then decays it to 0 (cosine), so the final epoch (the saved model) is the settled one.
    `epochs` defaults to the recipe's, else the dataset's own; `image_size` to the dataset's native size.
    `augment` shifts the training images at random (and flips them where the dataset says that keeps the class).
    `early_stopping=N` stops after N epochs without a better validation accuracy; `keep_best` saves the weights
    of the best validation epoch instead of the last. `mixed_precision` computes in bfloat16 on a CPU, float16
    on a GPU (variables stay float32; the saved model is a float32 copy, so export and parity are unchanged);
    `jit` compiles the train step with XLA.
    """
    started = time.perf_counter()
    spec = get_model_spec(model_name)
    if spec.task != "classification":
        raise ZooError(f"model {model_name!r} is a {spec.task} model; `zoo train` trains classifiers")
    model_config = dict(model_config or {})
    clash = sorted({"input_shape", "num_classes"} & set(model_config))
    if clash:
        raise ZooError(f"{', '.join(clash)} come from the dataset; use --image-size to change the input size")
    for name, value in (("image_size", image_size), ("early_stopping", early_stopping)):
        if value is not None:
            check_positive(name, value, integer=True)
    plan = recipe_for(model_name, recipe).with_overrides(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
        schedule=schedule, label_smoothing=label_smoothing)
    batch_size, lr = plan.batch_size, plan.lr
    out = Path(out).expanduser()
    checkpoints = checkpoint_dir(out)
    with run_directory(out, RUN_FILES, overwrite=overwrite) as staging:
        keras.utils.set_random_seed(seed)
        data = load_dataset(dataset, seed=seed)
        epochs = data.default_epochs if plan.epochs is None else plan.epochs
        size = data.default_image_size if image_size is None else image_size
        precision = mixed_policy() if mixed_precision else "float32"
        fingerprint = {**plan.to_dict(), "model": model_name, "dataset": dataset, "epochs": epochs, "seed": seed,
                       "image_size": size, "augment": augment, "model_config": model_config, "precision": precision,
                       "jit": jit}
        distributed = make_strategy(strategy)
        replicas = distributed.num_replicas_in_sync if distributed else 1
        if batch_size % replicas:
            raise ZooError(f"--batch-size {batch_size} is not divisible by the {replicas} replicas; use a multiple of "
                           f"{replicas} (the batch is split evenly across them)")
        with distributed.scope() if distributed else contextlib.nullcontext(), dtype_policy(precision):
            restored = load_checkpoint(checkpoints, fingerprint) if resume else None
            if restored is None:
                remove_checkpoint(checkpoints)
                model = create_model(
                    model_name, input_shape=(size, size, data.channels), num_classes=data.num_classes, **model_config
                )
                if distributed:
                    model = synchronize_bn(model)
                compile_with(model, plan, steps=epochs * steps_per_epoch(data.train, batch_size), jit=jit)
                first_epoch, history = 0, {}
            else:
                model, first_epoch, history = restored
        train_ds = make_pipeline(data.train, image_size=size, channels=data.channels, batch_size=batch_size,
                                 training=True, seed=seed, augment=augment, flip=data.mirror_invariant,
                                 epochs=epochs, first_epoch=first_epoch)
        val_ds, test_ds = (
            make_pipeline(split, image_size=size, channels=data.channels, batch_size=batch_size, training=False,
                          seed=seed)
            for split in (data.val, data.test)
        )
        checkpoint = EpochCheckpoint(checkpoints, fingerprint, history)
        stopper = BestEpoch(patience=early_stopping, restore=keep_best, history=history)
        if first_epoch < epochs and strategy == "multiworker":
            from zoo.multiworker import fit_custom

            fit_custom(model, distributed, train_ds, val_ds, epochs=epochs, first_epoch=first_epoch,
                       steps=steps_per_epoch(data.train, batch_size), global_batch=batch_size,
                       callbacks=[stopper, checkpoint])
        elif first_epoch < epochs:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=epochs,
                initial_epoch=first_epoch,
                steps_per_epoch=steps_per_epoch(data.train, batch_size),
                shuffle=False,  # the pipeline shuffles, seeded per epoch; Keras cannot shuffle a tf.data.Dataset
                verbose=verbose,
                callbacks=[stopper, checkpoint],
            )
        stopper.finish(model)
        history = checkpoint.history
        write_history(staging / "history.csv", history)
        if strategy == "multiworker":
            from zoo.multiworker import evaluate_locally

            test = evaluate_locally(model, test_ds)
        else:
            test = model.evaluate(test_ds, verbose=0, return_dict=True)
        # a mixed-precision run saves a float32 copy (uncompiled), so export and parity compute in float32
        (as_float32(model) if mixed_precision else model).save(staging / "model.keras")
        plot_curves(history, staging / "curves.png")
        metrics = {
            "model": model_name,
            "dataset": dataset,
            "test_accuracy": float(test["accuracy"]),
            "test_loss": float(test["loss"]),
            "val_accuracy": float(history["val_accuracy"][-1]),
            "params": int(model.count_params()),
            "epochs": epochs,
            "epochs_run": len(history["loss"]),
            "best_epoch": stopper.best_epoch,
            "kept": "best" if keep_best else "last",
            "recipe": recipe,
            **{key: value for key, value in plan.to_dict().items() if key != "epochs"},
            "seed": seed,
            "augment": augment,
            "image_size": size,
            "channels": data.channels,
            "model_config": model_config,
            "resumed_from_epoch": first_epoch,
            "strategy": strategy,
            "precision": precision,
            "jit": jit,
            "replicas": replicas,
            **dataset_facts(data, started),
        }
        write_metrics(staging, metrics)
    remove_checkpoint(checkpoints)
    return metrics


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy set to `name` while models are built and loaded, then restored."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def dataset_facts(data, started: float) -> dict[str, Any]:
    """What every classifier run's metrics.json records about its data, version and time."""
    return {
        "samples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "class_names": data.class_names,
        "zoo_version": zoo.__version__,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }


class BestEpoch(keras.callbacks.Callback):
    """Tracks the epoch with the best validation accuracy (over the whole run, resumed epochs included); stops
    after `patience` epochs without improvement; `restore` puts the best epoch's weights back at the end."""

    def __init__(self, *, patience: int | None, restore: bool, history: dict[str, list[float]]) -> None:
        super().__init__()
        self.patience, self.restore = patience, restore
        scores = history.get("val_accuracy", [])
        self.best = max(scores) if scores else -1.0
        self.best_epoch = scores.index(self.best) if scores else None
        self.best_weights = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        score = float((logs or {}).get("val_accuracy", -1.0))
        if score > self.best:
            self.best, self.best_epoch = score, epoch
            if self.restore:
                self.best_weights = self.model.get_weights()
        elif self.patience is not None and self.best_epoch is not None and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def finish(self, model: keras.Model) -> None:
        if self.restore and self.best_weights is not None:
            model.set_weights(self.best_weights)


def compile_classifier(model: keras.Model, lr: float, *, steps: int, from_logits: bool = True) -> None:
    """zoo's default recipe (Adam, linear warm-up from lr/10 over 10 % of the steps, then cosine decay to 0) at
    `lr`. The warm-up keeps the first steps from outrunning BN's statistics."""
    compile_with(model, DEFAULT.with_overrides(lr=lr), steps=steps, from_logits=from_logits)
