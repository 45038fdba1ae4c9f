"""The one runtime table (export/runtime_table.py): names, what each option writes, which runtimes run for a
device, and the errors that name the table's runtimes. Cheap: nothing is loaded or exported."""
import pytest

from export.bench import parse_runtimes
from export.errors import ExportError
from export.ort_session import DEVICES
from export.pipeline import export_model
from export.runtime_table import (
    NAMES,
    ONNX,
    ONNX_FP16,
    ORIGINAL,
    RUNTIMES,
    by_name,
    check_device,
    parity_tolerances,
    to_write,
    select,
    writers,
)
from zoo.cli.common import Device


def test_names_and_writers():
    assert len(set(NAMES)) == len(NAMES)
    assert NAMES[0] == "keras" and by_name("keras").artifact == ORIGINAL and by_name("keras").writer is None
    assert [r.option for r in writers()] == ["fold_bn", "savedmodel", "onnx", "fp16", "int8", "tflite", "int8"]  # write order
    assert by_name("ort-cpu-fp16").how_to_get() == "zoo export --onnx --fp16"
    assert by_name("ort-cpu-int8").how_to_get() == "zoo export --onnx --int8" and by_name("ort-cpu-int8").precision == "int8"
    assert {r.device for r in RUNTIMES if r.artifact in (ONNX, ONNX_FP16)} == {"cpu", "cuda", "tensorrt"}
    assert [d.value for d in Device] == list(DEVICES)


def test_cpu_selects_the_cpu_runtimes_and_says_what_it_skipped():
    chosen, notes = select([ORIGINAL, ONNX, ONNX_FP16], "cpu")
    assert [r.name for r in chosen] == ["keras", "ort-cpu", "ort-cpu-fp16"]
    assert notes == ["ort-cuda, ort-cuda-fp16 skipped: not requested (device=cpu)"]
    with pytest.raises(ExportError, match="unknown device 'gpu': use auto, cpu, cuda, tensorrt"):
        check_device("gpu")


def test_float16_runtimes_get_their_tolerance():
    assert parity_tolerances(["ort-cpu", "ort-cpu-fp16", "not-a-runtime"], 1e-5, 1e-5) == {"ort-cpu-fp16": (1e-3, 1e-3)}


def test_bench_names_are_the_table_names():
    assert parse_runtimes("keras-folded,ort-cpu") == ["keras-folded", "ort-cpu"]
    with pytest.raises(ExportError, match="onnx-fp16 is now ort-cpu-fp16 or ort-cuda-fp16"):
        parse_runtimes("onnx-fp16")


@pytest.mark.parametrize("options, message", [
    ({"fp16": True, "onnx": False}, "--fp16 converts model.onnx: add --onnx"),
    ({"int9": True}, "unknown export format"),
])
def test_export_options_are_checked_before_anything_loads(tmp_path, options, message):
    with pytest.raises(ExportError, match=message):
        export_model(tmp_path / "missing.keras", tmp_path / "out", **options)
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_runtimes_run_only_when_asked_for():
    """TensorRT engines take minutes to build: auto and cpu never choose them (and say nothing about them); device
    tensorrt chooses them and the CPU and CUDA ones, or fails with the probe's reason."""
    from export.ort_session import tensorrt_unavailable_reason
    from export.runtime_table import runs_on

    present = [ORIGINAL, ONNX, ONNX_FP16]
    for device in ("auto", "cpu"):
        chosen, notes = select(present, device)
        assert not any("tensorrt" in r.name for r in chosen) and not any("tensorrt" in n for n in notes)
    assert runs_on(by_name("ort-tensorrt"), "auto") == "needs --device tensorrt, not auto"
    assert by_name("ort-tensorrt-fp16").precision == "float16"
    assert parity_tolerances(["ort-tensorrt-fp16"], 1e-5, 1e-5) == {"ort-tensorrt-fp16": (1e-3, 1e-3)}
    if tensorrt_unavailable_reason() is None:
        chosen, _ = select(present, "tensorrt")
        assert {"ort-cpu", "ort-cuda", "ort-tensorrt", "ort-tensorrt-fp16"} <= {r.name for r in chosen}
    else:
        with pytest.raises(ExportError, match="TensorRT execution provider is not usable here: "):
            select(present, "tensorrt")


def test_a_second_writer_of_an_option_runs_only_with_what_it_converts():
    assert [r.name for r in to_write(["onnx", "int8"])] == ["ort-cpu", "ort-cpu-int8"]
    assert [r.name for r in to_write(["onnx", "int8", "tflite"])] == ["ort-cpu", "ort-cpu-int8", "tflite",
                                                                      "tflite-int8"]
    with pytest.raises(ExportError, match="--int8 converts model.onnx: add --onnx"):
        to_write(["int8", "tflite"])
