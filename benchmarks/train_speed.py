"""Training throughput: `zoo train` against a plain hand-written Keras `model.fit` on the same model, data and
batch, plus the input pipeline alone and the model step alone (is the input the bottleneck?).

Steady-state images/s: each trainer runs 1 epoch and then 1 + K epochs from scratch, and the difference in wall
time is the time of K epochs (tracing, compilation and the first epoch's warm-up cancel out). zoo's figure
includes what zoo adds per epoch (the epoch checkpoint, the per-epoch permutation, validation like plain fit).
PyTorch is not installed on this machine, so no PyTorch row (the script says so when torch is missing).

    python benchmarks/train_speed.py [--model cnn_bn] [--batch 64] [--epochs 4] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import _common  # noqa: E402,F401 - the repository on sys.path, quiet TensorFlow (benchmarks/_common.py)


def zoo_seconds(model: str, epochs: int, batch: int, augment: bool, **options) -> float:
    from zoo.train import train

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train(model, dataset="digits", epochs=epochs, batch_size=batch, out=Path(tmp) / "run", augment=augment,
              verbose=0, **options)
        return time.perf_counter() - started


def plain_arrays():
    """What a user would write: sklearn digits, scaled to [0, 1], resized to 28×28, the same 70/15/15 split."""
    import numpy as np
    import tensorflow as tf

    from zoo.data import load_dataset

    data = load_dataset("digits")  # the same split as zoo's run, so both fit the same images

    def prepare(split):
        x = tf.image.resize(split.x.astype("float32") / 255.0, [28, 28], antialias=True).numpy().clip(0, 1)
        return x, split.y.astype(np.int64)

    return prepare(data.train), prepare(data.val)


def plain_seconds(model_name: str, epochs: int, batch: int, arrays) -> float:
    import keras

    from zoo.registry import create_model

    (x, y), (xv, yv) = arrays
    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = create_model(model_name, input_shape=x.shape[1:], num_classes=10)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=batch, epochs=epochs, validation_data=(xv, yv), verbose=0)
    return time.perf_counter() - started


def pipeline_images_per_second(batch: int, epochs: int, augment: bool) -> float:
    from zoo.data import load_dataset, make_pipeline

    data = load_dataset("digits")
    pipeline = make_pipeline(data.train, image_size=28, channels=1, batch_size=batch, training=True, seed=0,
                             augment=augment, epochs=epochs + 1)
    iterator = iter(pipeline)
    for _ in range(-(-len(data.train) // batch)):  # the first epoch builds the in-memory images
        next(iterator)
    started = time.perf_counter()
    count = sum(int(x.shape[0]) for x, _ in iterator)
    return count / (time.perf_counter() - started)


def step_images_per_second(model_name: str, batch: int, steps: int) -> float:
    import keras
    import numpy as np

    from zoo.registry import create_model

    model = create_model(model_name, input_shape=(28, 28, 1), num_classes=10)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
    y = np.zeros(batch, np.int64)
    for _ in range(5):
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_bn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4, help="K: epochs timed after the first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "train_speed.json")
    args = parser.parse_args()

    from zoo.data import load_dataset

    images = len(load_dataset("digits").train) * args.epochs
    arrays = plain_arrays()
    trainers = {
        "plain model.fit (numpy arrays)": lambda e: plain_seconds(args.model, e, args.batch, arrays),
        "zoo train --no-augment": lambda e: zoo_seconds(args.model, e, args.batch, augment=False),
        "zoo train (random shifts)": lambda e: zoo_seconds(args.model, e, args.batch, augment=True),
        "zoo train --mixed-precision (bfloat16 on CPU)": lambda e: zoo_seconds(args.model, e, args.batch, augment=True,
                                                                               mixed_precision=True),
        "zoo train --jit (XLA)": lambda e: zoo_seconds(args.model, e, args.batch, augment=True, jit=True),
    }
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(args.repeats):  # interleaved, so load changes hit every trainer alike
        for name, run in trainers.items():
            one, many = run(1), run(1 + args.epochs)
            rates[name].append(images / (many - one))
            print(f"repeat {repeat}: {name}: {rates[name][-1]:.0f} images/s", flush=True)
    baseline = statistics.median(rates["plain model.fit (numpy arrays)"])
    rows = [(name, statistics.median(values), statistics.median(values) / baseline) for name, values in rates.items()]
    pipeline = {augment: pipeline_images_per_second(args.batch, args.epochs, augment) for augment in (False, True)}
    step = step_images_per_second(args.model, args.batch, steps=100)
    try:
        import torch  # noqa: F401

        torch_note = "torch is installed but no PyTorch twin of this model is written yet"
    except ImportError:
        torch_note = "PyTorch not installed: no PyTorch row"
    lines = [f"| trainer ({args.model}, digits 28×28, batch {args.batch}, {args.epochs} epochs timed) | images/s "
             "(median) | vs plain fit |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.0f} | {ratio:.2f}× |" for name, rate, ratio in rows]
    lines += [f"| zoo input pipeline alone, no augmentation | {pipeline[False]:.0f} | – |",
              f"| zoo input pipeline alone, random shifts | {pipeline[True]:.0f} | – |",
              f"| model step alone (train_on_batch, one fixed batch) | {step:.0f} | – |"]
    print("\n".join(lines))
    print(torch_note)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "model": args.model, "batch": args.batch, "epochs_timed": args.epochs, "repeats": args.repeats,
        "images_per_second": rates, "ratios": {name: ratio for name, _, ratio in rows},
        "pipeline_images_per_second": {"plain": pipeline[False], "augment": pipeline[True]},
        "step_images_per_second": step, "torch": torch_note, "loadavg": list(os.getloadavg()),
    }, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
