"""Run an image-to-image model (style transformer, denoiser) from any format on images of any size.

The model comes from `export.artifacts.open_runner`: a `.keras`, a SavedModel folder, an `.onnx` (ONNX Runtime)
or a `.tflite`, all behind the same call. Images of the same size go through together in batches; each output
must have its input's H×W.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

import zoo.layers  # noqa: F401 - registers zoo's layers, so zoo's `.keras` files load in safe_mode
from zoo.checks import check_positive
from zoo.errors import ZooError


class ImageModel:
    def __init__(self, path: Path | str, *, device: str = "auto") -> None:
        from export.artifacts import open_runner

        self.runner = open_runner(path, device=device)
        if len(self.runner.input_names) != 1 or len(self.runner.output_names) != 1:
            raise ZooError(f"{path} has inputs {self.runner.input_names} and outputs {self.runner.output_names}; "
                           f"an image model has one of each")
        self.input_name, self.output_name = self.runner.input_names[0], self.runner.output_names[0]
        shape, dtype = self.runner.input_shapes[self.input_name], self.runner.input_dtypes[self.input_name]
        if len(shape) != 4 or not dtype.startswith("float"):
            dims = "×".join("?" if d is None else str(d) for d in shape)
            raise ZooError(f"{path} takes {dtype} input {self.input_name!r} of shape {dims}; an image model takes "
                           f"float images, batch×H×W×C (C = 1 or 3), e.g. a style network or denoiser exported by "
                           f"`zoo export`")
        self.detail = f"{self.runner.name}: {self.runner.detail}"
        channels = self.runner.input_shapes[self.input_name][-1]
        self.channels = int(channels) if channels is not None else None

    def __call__(self, images: list[np.ndarray], *, batch_size: int = 4) -> list[np.ndarray]:
        """One output per H×W×C float32 image, in order."""
        check_positive("batch size", batch_size, integer=True)
        by_size: dict[tuple, list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_size[image.shape].append(index)
        outputs: list[np.ndarray | None] = [None] * len(images)
        for shape, indices in by_size.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                batch = np.stack([images[i] for i in chunk]).astype(np.float32)
                result = np.asarray(self.runner({self.input_name: batch})[self.output_name])
                if result.shape[:3] != batch.shape[:3]:
                    raise ZooError(f"the model turned a {shape[1]}×{shape[0]} image into {result.shape[2]}×"
                                   f"{result.shape[1]}; an image model must keep the size")
                for i, output in zip(chunk, result):
                    outputs[i] = output
        return outputs  # type: ignore[return-value]

