"""The runners: one call signature for every runtime, honest ONNX Runtime provider reporting, NCHW feeds, TFLite
resizing, and export folders with broken or missing artifacts."""
import shutil

import keras
import numpy as np
import pytest

from export.artifacts import ONNX, ORIGINAL, SAVEDMODEL, TFLITE, UnavailableRunner, runners_for
from export.errors import ExportError
from export.onnx import export_onnx
from export.parity import compare, make_inputs, run_parity
from export.runtimes import (
    KerasRunner,
    OrtRunner,
    SavedModelRunner,
    TFLiteRunner,
    cuda_available,
    cuda_unavailable_reason,
)
from export.savedmodel import export_savedmodel

from export.tflite import export_tflite
from tests.helpers import assert_parity

INPUT = "pixel-values"  # not a Python identifier: SavedModel signatures rename the keyword to pixel_values


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runtimes")
    x = inputs = keras.Input((6, 6, 2), name=INPUT)
    x = keras.layers.Conv2D(3, 3, name="conv", bias_initializer="random_normal")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="scores", bias_initializer="random_normal")(x))
    model.save(out / ORIGINAL)
    export_savedmodel(model, out / SAVEDMODEL)
    export_onnx(model, out / ONNX)
    export_onnx(model, out / "nchw.onnx", nchw=True)
    export_tflite(model, out / TFLITE, saved_model=out / SAVEDMODEL)
    return out


RUNNERS = {
    "keras": lambda d: KerasRunner(d / ORIGINAL),
    "savedmodel": lambda d: SavedModelRunner(d / SAVEDMODEL),
    "ort-cpu": lambda d: OrtRunner(d / ONNX, device="cpu"),
    "ort-nchw": lambda d: OrtRunner(d / "nchw.onnx", device="cpu", name="ort-nchw"),
    "tflite": lambda d: TFLiteRunner(d / TFLITE),
}


@pytest.mark.parametrize("kind", list(RUNNERS))
def test_every_runner_has_the_same_call(kind, export_dir):
    runner = RUNNERS[kind](export_dir)
    reference = KerasRunner(export_dir / ORIGINAL)
    assert runner.name == kind
    assert runner.input_names == [INPUT]
    assert runner.output_names == ["scores"]
    assert runner.detail
    for batch in (7, 1, 3):  # TFLite must resize its input each time
        feeds = make_inputs(reference.signature.inputs, batch=batch, seed=batch)
        outputs = runner(feeds)
        assert list(outputs) == ["scores"]
        assert outputs["scores"].shape == (batch, 4)
        assert compare(reference(feeds)["scores"], outputs["scores"])["passed"]


def test_nchw_model_is_fed_nhwc_and_says_so(export_dir):
    runner = OrtRunner(export_dir / "nchw.onnx", device="cpu")
    assert runner.session.get_inputs()[0].shape[1] == 2  # N, C, H, W in the graph
    assert "NCHW" in runner.detail


def test_ort_reports_the_providers_in_use(export_dir):
    runner = OrtRunner(export_dir / ONNX, device="auto")
    in_use = runner.session.get_providers()
    assert runner.detail.endswith("providers: " + ", ".join(in_use))
    assert runner.name == ("ort-cuda" if in_use[0] == "CUDAExecutionProvider" else "ort-cpu")
    assert runner.name == ("ort-cuda" if cuda_available() else "ort-cpu")


def test_ort_cuda_never_falls_back_silently(export_dir):
    if cuda_available():
        runner = OrtRunner(export_dir / ONNX, device="cuda")
        assert runner.session.get_providers()[0] == "CUDAExecutionProvider"
        return
    assert cuda_unavailable_reason()
    with pytest.raises(ExportError, match="^CUDA execution provider is not usable here: .+"):
        OrtRunner(export_dir / ONNX, device="cuda")
    with pytest.raises(ExportError, match="CUDA execution provider is not usable here"):
        runners_for(export_dir, device="cuda")
    _, candidates, notes = runners_for(export_dir, device="auto")
    assert "ort-cuda" not in [runner.name for runner in candidates]
    assert notes == [f"ort-cuda skipped: {cuda_unavailable_reason()}"]


def test_export_folder_runs_every_artifact(export_dir):
    reference, candidates, _ = runners_for(export_dir, device="cpu")
    assert [runner.name for runner in candidates] == ["savedmodel", "ort-cpu", "tflite"]
    feeds = make_inputs(reference.signature.inputs, batch=2, seed=0)
    assert run_parity(reference, candidates, [("batch 2", feeds)]).passed


def test_broken_artifact_is_a_fail_row_not_a_crash(export_dir, tmp_path):
    shutil.copy(export_dir / ORIGINAL, tmp_path / ORIGINAL)
    (tmp_path / ONNX).write_bytes(b"not an onnx model")
    reference, candidates, _ = runners_for(tmp_path, device="cpu")
    assert isinstance(candidates[0], UnavailableRunner)
    feeds = make_inputs(reference.signature.inputs, batch=1, seed=0)
    report = run_parity(reference, candidates, [("batch 1", feeds)])
    assert not report.passed
    assert report.rows[0].runtime == "ort-cpu"
    assert "ONNX Runtime cannot load" in report.rows[0].reason


def test_missing_or_corrupt_reference_is_a_one_line_error(tmp_path):
    with pytest.raises(ExportError, match="no model.keras"):
        runners_for(tmp_path)
    (tmp_path / ORIGINAL).write_bytes(b"garbage")
    with pytest.raises(ExportError, match="model.keras") as error:
        runners_for(tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.filterwarnings("ignore:When providing `inputs` as a dict")  # keys differ from tensor names on purpose
def test_keras_runner_takes_dict_inputs_by_key():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    merged = keras.layers.Concatenate(name="merged")([a, b])
    model = keras.Model({"first": a, "second": b}, {"sum": keras.layers.Dense(1, name="dense")(merged)})
    runner = KerasRunner(model)
    assert runner.input_names == ["first", "second"]
    feeds = make_inputs(runner.signature.inputs, batch=2, seed=0)
    expected = model({"first": feeds["first"], "second": feeds["second"]})["sum"]
    np.testing.assert_array_equal(runner(feeds)["sum"], keras.ops.convert_to_numpy(expected))


def test_ort_optimizers_can_be_switched_off_by_name(export_dir):
    reference = KerasRunner(export_dir / ORIGINAL)
    runner = OrtRunner(export_dir / ONNX, device="cpu", disabled_optimizers=("Pad_Fusion", "ConvAddFusion"))
    assert "optimizers off: Pad_Fusion, ConvAddFusion" in runner.detail
    feeds = {INPUT: np.random.default_rng(0).random((2, 6, 6, 2), dtype=np.float32)}
    assert_parity(list(reference(feeds).values()), list(runner(feeds).values()))


def test_open_runner_picks_the_runtime_from_the_file(export_dir):
    from export.artifacts import open_runner

    assert open_runner(export_dir / ONNX, device="cpu").name == "ort-cpu"
    assert open_runner(export_dir / ORIGINAL).name == "keras"
    assert open_runner(export_dir / "saved_model").name == "savedmodel"
    assert open_runner(export_dir).name == "keras"
    with pytest.raises(ExportError, match="does not exist"):
        open_runner(export_dir / "nothing.onnx")


@pytest.mark.parametrize("kind", sorted(RUNNERS))
def test_every_runner_reports_input_shapes_in_nhwc(kind, export_dir):
    runner = RUNNERS[kind](export_dir)
    assert runner.input_shapes == {INPUT: (None, 6, 6, 2)}
