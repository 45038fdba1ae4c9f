"""The `zoo` command line: thin typer commands over zoo (models, data, training) and export (fold, formats, parity).

Heavy libraries (TensorFlow, tf2onnx, onnxruntime) are imported inside the commands so `zoo --help` stays fast.
Library code raises ZooError / ExportError; every command turns them into one `error: ...` line and exit code 1.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter is not for users

app = typer.Typer(
    help="zoo: train BatchNorm networks, fold BN exactly, export SavedModel/ONNX/TFLite and prove parity.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@contextlib.contextmanager
def user_errors():
    """Turn domain errors (and anything unexpected) into one line on stderr and exit code 1."""
    from export.errors import ExportError
    from zoo.errors import ZooError

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
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if os.environ.get("ZOO_DEBUG"):
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (set ZOO_DEBUG=1 for the traceback)", err=True)
        raise typer.Exit(1) from None


def _quiet_tensorflow() -> None:
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


@app.command("list")
def list_command() -> None:
    """List the registered models with parameter count, default input shape and description."""
    with user_errors():
        from zoo.registry import create_model, list_models

        rows = []
        for spec in list_models():
            model = create_model(spec.name)
            shape = "×".join("?" if d is None else str(d) for d in spec.default_input_shape)
            rows.append((spec.name, f"{model.count_params():,}", shape, spec.description))
        header = ("model", "params", "input", "description")
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
        for row in [header, *rows]:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="Registered model name (see `zoo list`).")],
    dataset: Annotated[str, typer.Option(help="digits | mnist | fashion_mnist | cifar10 | cifar100 | npz:PATH | folder:PATH")] = "digits",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: the dataset's own default).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, 10 % warm-up, cosine decay).")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and initialisation.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default: runs/MODEL).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Square input size (default: the dataset's).")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random shifts (and flips where label-safe) in training.")] = True,
) -> None:
    """Train a zoo model with tf.data; writes model.keras, history.csv, metrics.json and curves.png."""
    with user_errors():
        _quiet_tensorflow()
        from zoo.train import train as train_model

        out = out or Path("runs") / model
        metrics = train_model(model, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                              out=out, image_size=image_size, augment=augment)
        typer.echo(f"test accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) on "
                   f"{metrics['dataset']} after {metrics['epochs']} epochs in {metrics['wall_time_s']:.1f} s; "
                   f"wrote {out}/model.keras, history.csv, metrics.json, curves.png")


@app.command("export")
def export_command(
    src: Annotated[Path, typer.Argument(help="A run directory (with model.keras) or any .keras file.")],
    out: Annotated[Optional[Path], typer.Option(help="Export directory (default: SRC/export or FILE_export).")] = None,
    fold_bn: Annotated[bool, typer.Option("--fold-bn/--no-fold-bn", help="Fold every exactly-foldable BN first.")] = False,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Write model.onnx (tf2onnx).")] = False,
    savedmodel: Annotated[bool, typer.Option("--savedmodel/--no-savedmodel", help="Write saved_model/.")] = True,
    tflite: Annotated[bool, typer.Option("--tflite/--no-tflite", help="Write model.tflite.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (≥ 13).")] = 17,
    nchw: Annotated[bool, typer.Option(help="ONNX takes and returns NCHW images (no layout Transposes).")] = False,
    parity: Annotated[bool, typer.Option("--parity/--no-parity", help="Check every written format against the original.")] = True,
    device: Annotated[Device, typer.Option(help="ONNX Runtime device for the parity check.")] = Device.auto,
) -> None:
    """Fold BN, write SavedModel / ONNX / TFLite, and print the parity table."""
    with user_errors():
        _quiet_tensorflow()
        from export.pipeline import export_model
        from zoo.runs import resolve_source

        source = resolve_source(src)
        result = export_model(source.keras_path, out or source.default_export_dir, fold_bn=fold_bn, onnx=onnx,
                              savedmodel=savedmodel, tflite=tflite, opset=opset, nchw=nchw,
                              metadata=source.metadata)
        if result.fold_report is not None:
            typer.echo(result.fold_report.summary())
        for path in result.written:
            typer.echo(f"wrote {path}")
        if parity:
            from export.artifacts import PARITY_REPORT

            _print_parity(result.directory, device=device.value, atol=1e-5, rtol=1e-5,
                          json_path=result.directory / PARITY_REPORT)


@app.command("parity")
def parity_command(
    src: Annotated[Path, typer.Argument(help="An export directory, a run directory, or a .keras file.")],
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option(help="Relative tolerance (an element fails only past both).")] = 1e-5,
    device: Annotated[Device, typer.Option(help="ONNX Runtime device: auto uses CUDA only when it really works.")] = Device.auto,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Compare every runtime's outputs with the original Keras model; exit 1 on any failure."""
    with user_errors():
        _quiet_tensorflow()
        from zoo.runs import resolve_export_dir

        with resolve_export_dir(src) as directory:
            _print_parity(directory, device=device.value, atol=atol, rtol=rtol, json_path=json_path)


def _print_parity(directory: Path, *, device: str, atol: float, rtol: float, json_path: Path | None) -> None:
    from export.pipeline import check_parity

    report = check_parity(directory, device=device, atol=atol, rtol=rtol)
    typer.echo(report.table())
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_dict(), indent=2))
    if not report.passed:
        typer.echo(f"error: parity FAILED at atol={atol:g} rtol={rtol:g}", err=True)
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - `python -m zoo.cli`
    app(prog_name="zoo")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
