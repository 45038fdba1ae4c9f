"""`zoo export` and `zoo parity`: fold BN, write the formats of the runtime table (export/runtime_table.py) and
prove every runtime computes what the original Keras model computes."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from zoo.cli.common import (
    Device,
    DeviceOption,
    JsonPath,
    Out,
    Overwrite,
    Sizes,
    load_zoo_layers,
    parse_sizes,
    user_errors,
)

commands = typer.Typer()


class TritonKind(str, enum.Enum):
    gpu = "gpu"
    cpu = "cpu"


@commands.command("export")
def export_command(
    src: Annotated[Path, typer.Argument(help="A run directory (with model.keras) or any .keras file.")],
    out: Out = None,
    fold_bn: Annotated[bool, typer.Option("--fold-bn/--no-fold-bn", help="Fold every exactly-foldable BN first.")] = False,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Write model.onnx (tf2onnx).")] = False,
    savedmodel: Annotated[bool, typer.Option("--savedmodel/--no-savedmodel", help="Write saved_model/.")] = True,
    tflite: Annotated[bool, typer.Option("--tflite/--no-tflite", help="Write model.tflite.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (≥ 13).")] = 17,
    nchw: Annotated[bool, typer.Option(help="ONNX takes and returns NCHW images (no layout Transposes).")] = False,
    parity: Annotated[bool, typer.Option("--parity/--no-parity", help="Check every written format against the original.")] = True,
    device: DeviceOption = Device.auto,
    size: Sizes = None,
    triton: Annotated[Optional[Path], typer.Option(help="Also write a Triton model repository here: REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (implies --onnx).")] = None,
    triton_name: Annotated[Optional[str], typer.Option(help="Model name in the Triton repository (default: the run's or file's name, sanitised).")] = None,
    triton_max_batch: Annotated[int, typer.Option(help="Triton max_batch_size (0: no batching).")] = 8,
    triton_kind: Annotated[TritonKind, typer.Option(help="Triton instance_group kind.")] = TritonKind.gpu,
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="Also write model_fp16.onnx: float16 weights and compute, float32 inputs/outputs, converted after folding; parity at atol = rtol = 1e-3.")] = False,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also write model_int8.onnx: ONNX Runtime static quantization (QDQ, per-channel int8 weights), calibrated on training images and kept only if it passes the accuracy gate (docs/int8.md).")] = False,
    calib_dataset: Annotated[Optional[str], typer.Option(help="Dataset whose TRAINING split calibrates --int8 (and whose test split gates it); default: the run's own. Any dataset spec of zoo train.")] = None,
    calib_images: Annotated[int, typer.Option(help="Calibration images for --int8.")] = 512,
    calib_method: Annotated[str, typer.Option(help="Calibration for --int8: minmax, entropy or percentile.")] = "minmax",
    keep_float: Annotated[Optional[list[str]], typer.Option(help="Keras layer to leave in float with --int8 (repeatable).")] = None,
    int8_min_agreement: Annotated[float, typer.Option(help="--int8 gate: top-1 agreement with the fp32 model, percent.")] = 99.0,
    int8_max_drop: Annotated[float, typer.Option(help="--int8 gate: largest accuracy drop on the test split, points.")] = 0.5,
    int8_bias_correction: Annotated[bool, typer.Option("--int8-bias-correction", help="--int8: subtract each quantized conv's measured mean output shift from its bias (docs/int8.md says what it did in measurements).")] = False,
    int8_weights: Annotated[str, typer.Option(help="--int8 weight scales: per-channel, or per-tensor for a target that takes only one scale per tensor (docs/int8.md measures both).")] = "per-channel",
    overwrite: Overwrite = False,
) -> None:
    """Fold BN, write SavedModel / ONNX / TFLite, and print the parity table.

    The export goes to --out (default: SRC/export for a run directory, FILE_export beside a .keras file)."""
    with user_errors():
        from zoo.errors import ZooError
        from zoo.runs import resolve_source

        sizes = parse_sizes(size)
        source = resolve_source(src)
        onnx = onnx or triton is not None
        if triton_max_batch < 0:
            raise ZooError(f"--triton-max-batch {triton_max_batch} must be 0 (no batching) or more")
        triton_name = triton_name or (src.name if src.is_dir() else src.stem)
        if triton is not None:  # everything that can be checked is, before anything is written
            from export.triton import check_triton_target

            check_triton_target(triton, triton_name, overwrite=overwrite)
        load_zoo_layers()
        from export.pipeline import export_model

        settings = None
        if int8:
            from zoo.int8_data import int8_settings

            settings = int8_settings(source.keras_path, dataset=calib_dataset, run_dataset=source.metadata.get(
                "dataset"), images=calib_images, method=calib_method, keep_float=tuple(keep_float or ()),
                min_agreement=int8_min_agreement / 100, max_drop=int8_max_drop / 100,
                size=sizes[0] if sizes else None, run_metrics=source.metrics,
                bias_correction=int8_bias_correction, weights=int8_weights)
        else:
            given = [flag for flag, value in (("--calib-dataset", calib_dataset), ("--keep-float", keep_float),
                                              ("--int8-bias-correction", int8_bias_correction),
                                              ("--int8-weights", int8_weights != "per-channel")) if value]
            if given:
                raise ZooError(f"{' and '.join(given)} apply to --int8: add --int8")
        result = export_model(source.keras_path, out or source.default_export_dir, fold_bn=fold_bn, onnx=onnx,
                              savedmodel=savedmodel, tflite=tflite, fp16=fp16, opset=opset, nchw=nchw,
                              metadata=source.metadata, parity_sizes=sizes if parity else None, overwrite=overwrite,
                              int8=int8, int8_settings=settings)
        for report in result.reports.values():
            typer.echo(report.summary())
        for path in result.written:
            typer.echo(f"wrote {path}")
        if parity:
            from export.artifacts import PARITY_REPORT

            print_parity(result.directory, device=device.value, atol=1e-5, rtol=1e-5,
                         json_path=result.directory / PARITY_REPORT, sizes=sizes, overwrite=True)
        if triton is not None:
            from export.artifacts import ONNX
            from export.triton import write_triton_repository

            model_dir = write_triton_repository(result.directory / ONNX, triton, triton_name, overwrite=overwrite,
                                                max_batch_size=triton_max_batch, instance_kind=triton_kind.value)
            typer.echo(f"wrote Triton model {model_dir.name!r}: {model_dir}/config.pbtxt, {model_dir}/1/model.onnx")


@commands.command("parity")
def parity_command(
    src: Annotated[Path, typer.Argument(help="An export directory, a run directory, or a .keras file.")],
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option(help="Relative tolerance (an element fails only past both).")] = 1e-5,
    device: DeviceOption = Device.auto,
    json_path: JsonPath = None,
    size: Sizes = None,
    ort_disable: Annotated[Optional[list[str]], typer.Option(help="Switch off an ONNX Runtime graph optimizer by name (repeatable), e.g. Pad_Fusion, to tell an ORT rewrite's error from an export's.")] = None,
    localize: Annotated[bool, typer.Option("--localize", help="Compare every layer, not only the outputs, and name the first Keras layer where each runtime departs (docs/parity.md).")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Compare every runtime's outputs with the original Keras model; exit 1 on any failure.

    With --localize, every layer's output is compared, and the table names, per runtime, the first layer in
    topological order that breaks the tolerance rule."""
    with user_errors():
        from zoo.runs import resolve_export_dir

        sizes = parse_sizes(size)
        if json_path is not None:
            from export.atomic import check_target

            check_target(json_path, overwrite=overwrite, sources=[src], option="--json")
        load_zoo_layers()
        with resolve_export_dir(src) as directory:
            show = print_localization if localize else print_parity
            show(directory, device=device.value, atol=atol, rtol=rtol, json_path=json_path, sizes=sizes,
                 ort_disabled=tuple(ort_disable or ()), overwrite=overwrite)


def print_parity(directory: Path, *, device: str, atol: float, rtol: float, json_path: Path | None,
                 sizes: list[tuple[int, int]] | None = None, ort_disabled: tuple[str, ...] = (),
                 overwrite: bool = False) -> None:
    """Print the parity table of an export directory (and write it as JSON); exit 1 when any check failed."""
    from export.atomic import write_text
    from export.pipeline import check_parity

    report = check_parity(directory, device=device, atol=atol, rtol=rtol, sizes=sizes, ort_disabled=ort_disabled)
    typer.echo(report.table())
    if json_path is not None:
        write_text(json_path, json.dumps(report.to_dict(), indent=2), overwrite=overwrite)
    if not report.passed:
        typer.echo(f"error: parity FAILED at atol={atol:g} rtol={rtol:g}", err=True)
        raise typer.Exit(1)


def print_localization(directory: Path, *, device: str, atol: float, rtol: float, json_path: Path | None,
                       sizes: list[tuple[int, int]] | None = None, ort_disabled: tuple[str, ...] = (),
                       overwrite: bool = False) -> None:
    """Print where each runtime of an export directory departs from the original, layer by layer (and write it as
    JSON); exit 1 when any runtime diverges."""
    from export.atomic import write_text
    from export.localize import localize_export

    report = localize_export(directory, device=device, atol=atol, rtol=rtol, sizes=sizes, ort_disabled=ort_disabled)
    typer.echo(report.table())
    if json_path is not None:
        write_text(json_path, report.to_json(), overwrite=overwrite)
    if not report.passed:
        diverging = ", ".join(r.runtime for r in report.runtimes if r.diverges) or "no runtime could be compared"
        typer.echo(f"error: per-layer parity FAILED at atol={atol:g} rtol={rtol:g}: {diverging}", err=True)
        raise typer.Exit(1)
