"""`--strategy mirrored`: data-parallel training with tf.distribute.MirroredStrategy and synchronized BN.

Each replica gets 1/N of the global batch. Plain BN would normalise with its replica's statistics and the moving
averages would mix replica-local variances, so every BatchNormalization is switched to `synchronized=True`
(Keras 3, TensorFlow backend): mean and variance are all-reduced over the replicas each step, which makes one
step on N devices compute what one step on one device computes for the same global batch (tested on two logical
CPU devices, where unsynchronized BN measurably differs).

Devices: every visible GPU; without GPUs, `cpu_devices=N` splits the CPU into N logical devices — for testing the
distributed path, not for speed. That split must happen before TensorFlow initialises its devices, i.e. first
thing in the process (the CLI does it before building anything).
"""

from __future__ import annotations

from typing import Any

from zoo.errors import ZooError

STRATEGIES = ("none", "mirrored", "multiworker")


def split_cpu(devices: int) -> None:
    """Expose the CPU as `devices` logical devices (call before TensorFlow runs anything)."""
    import tensorflow as tf

    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 2:
        raise ZooError(f"--cpu-devices must be an integer >= 2, not {devices!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError:
        raise ZooError("--cpu-devices must be set before TensorFlow starts; run it as its own `zoo train` command")


def make_strategy(name: str):
    """None for "none"; a MirroredStrategy over the GPUs, else over the logical CPU devices if there are several;
    for "multiworker" a MultiWorkerMirroredStrategy from TF_CONFIG (zoo/multiworker.py)."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ZooError(f"unknown strategy {name!r}; use one of: {', '.join(STRATEGIES)}")
    if name == "none":
        return None
    if name == "multiworker":
        from zoo.multiworker import make_multiworker_strategy

        return make_multiworker_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        raise ZooError("--strategy mirrored found no GPU and one CPU device; on a CPU-only machine add "
                       "--cpu-devices 2 to test the distributed path")
    return tf.distribute.MirroredStrategy([d.name for d in cpus])


def synchronize_bn(model: Any):
    """A copy of `model`, same weights, whose every BatchNormalization (nested ones included) is synchronized.
    Build it inside the strategy's scope."""
    from export.rewrite import rebuild

    def synchronize(entry: dict[str, Any]) -> bool:
        if entry["class_name"] != "BatchNormalization":
            return False
        entry["config"]["synchronized"] = True
        return True

    return rebuild(model, synchronize)


def mixed_policy() -> str:
    """mixed_float16 where a GPU computes (Keras then scales the loss), mixed_bfloat16 on the CPU."""
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def as_float32(model: Any):
    """A copy of a mixed-precision model computing in float32 (its variables already are float32): what is saved
    and exported, so every runtime and the parity reference compute in float32."""
    from export.rewrite import rebuild

    def to_float32(entry: dict[str, Any]) -> bool:
        dtype = entry["config"].get("dtype")
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if not isinstance(name, str) or not name.startswith("mixed_"):
            return False
        entry["config"]["dtype"] = "float32"
        return True

    return rebuild(model, to_float32)
