"""What every `zoo` command shares: one `error:` line per failure (`user_errors`), the options several commands
take (declared once here), `--size` parsing, and the set-up before a model loads (`load_zoo_layers`).

Nothing here imports TensorFlow: `zoo --help` stays fast, and TensorFlow is imported only through
`quiet_tensorflow`, which keeps its C++ start-up log off the terminal.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer


class Device(str, enum.Enum):  # export.ort_session.DEVICES
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


class LossNet(str, enum.Enum):  # the style losses' network (zoo train style, zoo stylize --method optimize)
    vgg16 = "vgg16"
    vgg19 = "vgg19"
    random = "random"


DeviceOption = Annotated[Device, typer.Option(
    "--device", help="ONNX Runtime device: auto uses CUDA only when it really works (else the CPU); cuda fails when "
                     "it does not; tensorrt runs on ONNX Runtime's TensorRT provider (engines cached beside the "
                     "model) or fails; cpu never uses the GPU. `zoo doctor` says what works here.")]
Out = Annotated[Optional[Path], typer.Option(
    "--out", help="Where to write (the default is in the command's description).", show_default=False)]
Sizes = Annotated[Optional[list[str]], typer.Option(
    "--size", help="Image size HxW for models with dynamic H×W, e.g. 48x64. parity and export repeat it: the first "
                   "size runs at batch 1 and 7, each further one at batch 2 (default 32x32 and 48x64); bench takes "
                   "one (default 32x32).")]
JsonPath = Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace what is at the output path even if zoo did not write it (never the command's own "
                        "input). Without it zoo replaces only its own earlier outputs.")]


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every partial output is removed on the way out."""


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def user_errors():
    """Turn domain errors (and anything unexpected) into one line on stderr and exit code 1. Ctrl-C and SIGTERM
    unwind like an error, so no partial output stays behind (export/atomic.py)."""
    import signal
    import threading

    from export.errors import ExportError
    from zoo.errors import ZooError

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except typer.Exit:
        raise
    except (ZooError, ExportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted; nothing was written", err=True)
        raise typer.Exit(130) from None
    except Terminated:
        typer.echo("error: terminated (SIGTERM); nothing was written", err=True)
        raise typer.Exit(143) from None
    except Exception as exc:  # the CLI never shows a traceback unless asked
        if os.environ.get("ZOO_DEBUG"):
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (set ZOO_DEBUG=1 for the traceback)", err=True)
        raise typer.Exit(1) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def parse_sizes(values: list[str] | None) -> list[tuple[int, int]] | None:
    """`--size` values 'HxW' -> [(H, W), …] (None when none was given)."""
    from zoo.errors import ZooError

    if not values:
        return None
    sizes = []
    for value in values:
        height, sep, width = value.lower().partition("x")
        if not (sep and height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
            raise ZooError(f"--size {value!r} is not HxW (e.g. 250x333)")
        sizes.append((int(height), int(width)))
    return sizes


# TensorFlow's C++ start-up log, written while `import tensorflow` loads its libraries, before absl's logging is
# set up, so TF_CPP_MIN_LOG_LEVEL cannot stop it (TF 2.21): absl's "All log messages before
# absl::InitializeLog()…" warning and INFO lines (oneDNN custom operations, "Could not find cuda drivers").
_START_UP_LOG = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] ")


def quiet_tensorflow() -> None:
    """Import TensorFlow without its log on the terminal, so a failing command prints one `error:` line.

    TF_CPP_MIN_LOG_LEVEL=3 (unless set already) silences what TensorFlow logs once running (cpu_feature_guard,
    "failed call to cuInit"); the start-up lines it cannot silence are filtered from stderr during the import, and
    anything else written then (a real import problem) still shows. TF_ENABLE_ONEDNN_OPTS is left alone: it
    changes numerics, not just logging. With ZOO_DEBUG set nothing is hidden."""
    import logging

    if os.environ.get("ZOO_DEBUG"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with _filtered_stderr(_START_UP_LOG):
            import tensorflow  # noqa: F401
    for name in ("tensorflow", "tf2onnx", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_zoo_layers() -> None:
    """Before a command loads a model: quiet TensorFlow, then register zoo's custom layers (zoo.layers), so zoo's
    `.keras` files load in Keras' safe_mode."""
    quiet_tensorflow()
    import zoo.layers  # noqa: F401


@contextlib.contextmanager
def _filtered_stderr(noise: re.Pattern):
    """Run the block with file descriptor 2 (where C++ libraries write) captured; afterwards write back every
    captured line that does not match `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not noise.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
