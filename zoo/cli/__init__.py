"""The `zoo` command line: thin typer commands over zoo (models, data, training) and export (fold, formats, parity),
one module per command group:

    models.py   list
    train.py    train (trainers.py: one trainer per registry task), recalibrate-bn, finetune
    images.py   denoise, eval-denoise, stylize
    export.py   export, parity
    serve.py    serve, bench
    doctor.py   doctor
    common.py   what they share: one `error:` line per failure, the shared options, quiet TensorFlow

Heavy libraries (TensorFlow, tf2onnx, onnxruntime) are imported inside the commands so `zoo --help` stays fast.
Library code raises ZooError / ExportError; every command turns them into one `error: ...` line and exit code 1.
"""

from __future__ import annotations

import typer

from zoo.cli import doctor, export, images, models, serve, train

app = typer.Typer(
    help="zoo: train BatchNorm networks, fold BN exactly, export SavedModel/ONNX/TFLite and prove parity.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for group in (models, train, images, export, serve, doctor):  # the order of `zoo --help`
    app.registered_commands.extend(group.commands.registered_commands)


def main() -> None:
    app(prog_name="zoo")
