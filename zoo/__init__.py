"""zoo: a Keras 3 model zoo for BatchNorm networks, trained with tf.data and shipped through `export`."""

__version__ = "0.1.0"
