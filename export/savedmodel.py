"""SavedModel export with a `serving_default` signature: inputs named like the model's inputs, outputs keyed by the
model's output names (see export/signature.py).

Written with Keras' `ExportArchive`, not `tf.saved_model.save(tf.Module)`: both load fine in TensorFlow, but the
TFLite converter reads a tf.Module-tracked Keras 3 model with uninitialised weights (measured errors ~1e37), while an
ExportArchive SavedModel converts exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from export.atomic import atomic_output
from export.errors import ExportError, first_line
from export.signature import describe, serving_function

SIGNATURE_KEY = "serving_default"


def export_savedmodel(model: Any, path: Path | str) -> Path:
    """Write `model` as a SavedModel folder at `path` (atomic: complete or absent)."""
    import keras

    path = Path(path)
    serve = serving_function(model, describe(model))
    with atomic_output(path) as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE_KEY, serve)
        try:
            archive.write_out(str(tmp), verbose=False)
        except Exception as e:
            raise ExportError(f"SavedModel export failed: {first_line(e)}") from e
    return path
