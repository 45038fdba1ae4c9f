"""Layers the export itself needs, registered with Keras when this module is imported (export/loading.py does).

NearestUpsampling2D lives here, not in zoo/, because the TFLite export swaps it in for UpSampling2D in any user's
model, and `export/` never imports `zoo/`. It keeps the registered name `zoo>NearestUpsampling2D` under which zoo's
style networks were saved, so those files load as before.
"""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="zoo")  # the name saved style networks carry
class NearestUpsampling2D(keras.layers.Layer):
    """Nearest-neighbour upsampling by `factor` (an int, or (rows, columns)) that keeps the channel count static
    with a dynamic H×W.

    Keras' UpSampling2D (repeat + reshape) loses the channel count when H and W are unknown, and the TFLite
    converter then cannot lower the next conv; a broadcast-and-reshape with the channels spelled out does not.
    The TFLite export swaps it in for UpSampling2D (export/tflite.py).
    """

    def __init__(self, factor: int | tuple[int, int] = 2, **kwargs):
        super().__init__(**kwargs)
        rows, columns = (factor, factor) if isinstance(factor, int) else factor
        self.rows, self.columns = int(rows), int(columns)

    def call(self, x):
        rows, columns, channels = self.rows, self.columns, x.shape[-1]
        shape = keras.ops.shape(x)
        x = keras.ops.expand_dims(keras.ops.expand_dims(x, 2), 4)  # B, H, 1, W, 1, C
        x = keras.ops.broadcast_to(x, (shape[0], shape[1], rows, shape[2], columns, channels))
        return keras.ops.reshape(x, (shape[0], shape[1] * rows, shape[2] * columns, channels))

    def compute_output_shape(self, shape):
        grow = lambda d, f: None if d is None else d * f  # noqa: E731
        return (shape[0], grow(shape[1], self.rows), grow(shape[2], self.columns), shape[3])

    def get_config(self):
        factor = self.rows if self.rows == self.columns else [self.rows, self.columns]
        return {**super().get_config(), "factor": factor}
