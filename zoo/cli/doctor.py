"""`zoo doctor`: what runs on this machine (CPU, CUDA, TensorRT) and, for everything that does not, what to install."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Optional

import typer

from zoo.cli.common import JsonPath, Overwrite, user_errors

commands = typer.Typer()


class Requirement(str, enum.Enum):  # export.doctor.REQUIREMENTS
    cuda = "cuda"
    tensorrt = "tensorrt"


@commands.command("doctor")
def doctor_command(
    json_path: JsonPath = None,
    require: Annotated[Optional[Requirement], typer.Option(help="Exit 1 (one error line) unless this runs here: cuda (ONNX Runtime's CUDA provider) or tensorrt (TensorRT, on CUDA).", show_default=False)] = None,
    overwrite: Overwrite = False,
) -> None:
    """Versions, the CPU's instruction sets, TensorFlow's devices, ONNX Runtime's providers and whether each really
    runs, the CUDA / cuDNN / cuBLAS / TensorRT libraries found, the NVIDIA driver; a fix for every problem.

    Exit 0 when the CPU path works (and, with --require, when that runs too), else 1."""
    with user_errors():
        from zoo.cli.common import quiet_tensorflow

        if json_path is not None:
            from export.atomic import check_target

            check_target(json_path, overwrite=overwrite, option="--json")
        quiet_tensorflow()
        from export.doctor import diagnose

        report = diagnose(require=require.value if require else None)
        typer.echo(report.table())
        if json_path is not None:
            from export.atomic import write_text

            typer.echo(f"wrote {write_text(json_path, json.dumps(report.to_dict(), indent=2), overwrite=overwrite)}")
        verdict = report.verdict()
        if verdict:
            typer.echo(f"error: {verdict}", err=True)
            raise typer.Exit(1)
