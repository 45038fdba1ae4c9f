"""The installed zoo version, for what export writes (ONNX metadata, manifests). The one source is
`zoo.__version__`, which pyproject.toml reads; export never imports zoo, so it asks the installed metadata."""

from __future__ import annotations

from importlib import metadata


def zoo_version() -> str:
    try:
        return metadata.version("zoo")
    except metadata.PackageNotFoundError:
        return "unknown"
