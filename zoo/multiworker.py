"""`--strategy multiworker`: data-parallel training over several processes/machines with
tf.distribute.MultiWorkerMirroredStrategy, configured by the standard TF_CONFIG environment variable.

Keras 3's `fit` does not work under this strategy (keras-team/keras#20585), so training here is a custom loop:
each step runs `strategy.run` on the worker's share of the global batch, averages the per-example losses over the
*global* batch (`tf.nn.compute_average_loss`), and applies the all-reduced gradients with the model's compiled
optimizer; BN is synchronized across workers (zoo/distribute.py), so every worker holds the same weights after
every step. Validation runs locally on each worker. Each worker writes its own run directory; worker 0 (the chief)
is the one to keep. The strategy must be the first TensorFlow object of the process (one per process).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from zoo.errors import ZooError


def cluster_spec() -> dict[str, Any]:
    """TF_CONFIG, checked: a cluster with workers, this task's type and index, and this worker's port free."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ZooError('--strategy multiworker needs TF_CONFIG, e.g. {"cluster": {"worker": ["host1:12345", '
                       '"host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = int(task["index"])
        address = workers[index]
        host, _, port = address.rpartition(":")
        port = int(port)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise ZooError(f"TF_CONFIG is not a valid cluster spec ({type(error).__name__}: {error}); it needs "
                       '"cluster": {"worker": ["host:port", ...]} and "task": {"type": "worker", "index": i}') from None
    if task.get("type") != "worker":
        raise ZooError(f"TF_CONFIG task type {task.get('type')!r} is not supported; use worker (worker 0 is the chief)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("" if host in ("localhost", "127.0.0.1") else host, port))
        except OSError as error:
            raise ZooError(f"this worker's address {address} cannot be bound ({error.strerror}); free the port or "
                           "change TF_CONFIG") from None
    return config


def make_multiworker_strategy():
    cluster_spec()
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def fit_custom(model, strategy, train_ds, val_ds, *, epochs: int, first_epoch: int, steps: int,
               global_batch: int, callbacks: list) -> None:
    """Train a compiled `model` (built in `strategy`'s scope) for epochs `first_epoch` … `epochs − 1` of
    `steps` global batches each; calls each callback's `on_epoch_end` with loss/accuracy/val_loss/val_accuracy."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = iter(strategy.experimental_distribute_dataset(train_ds.with_options(options)))
    loss_object, optimizer = model.loss, model.optimizer

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = loss_object.call(y, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(y, tf.int64)), tf.float32))
        return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)

    @tf.function
    def step(x, y):
        results = strategy.run(replica_step, args=(x, y))
        return [strategy.reduce("SUM", value, axis=None) for value in results]

    for callback in callbacks:
        callback.set_model(model)
    model.stop_training = False
    for epoch in range(first_epoch, epochs):
        loss_sum = correct = seen = 0.0
        for _ in range(steps):
            loss, hits, count = step(*next(batches))
            loss_sum, correct, seen = loss_sum + float(loss), correct + float(hits), seen + float(count)
        val = evaluate_locally(model, val_ds)
        logs = {"loss": loss_sum / steps, "accuracy": correct / seen, "val_loss": val["loss"],
                "val_accuracy": val["accuracy"]}
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if model.stop_training:
            break


def evaluate_locally(model, dataset) -> dict[str, float]:
    """Mean loss and accuracy of `model` (inference mode) on this worker, without Keras' `evaluate`, which fails
    under this strategy like `fit`."""
    import numpy as np

    loss = correct = seen = 0.0
    for x, y in dataset:
        logits = model(x, training=False)
        loss += float(np.sum(model.loss.call(y, logits)))
        correct += float(np.sum(np.argmax(logits, -1) == y.numpy()))
        seen += len(y)
    return {"loss": loss / seen, "accuracy": correct / seen}
