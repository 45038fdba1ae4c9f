"""The one ONNX Runtime session factory: honest provider reporting, a loud CUDA failure, the options reaching ORT,
IO binding and warm-up. CPU only: on a machine with CUDA the CUDA branches check that CUDA really runs."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.errors import ExportError
from export.ort_session import (
    CPU,
    CUDA,
    cuda_available,
    cuda_unavailable_reason,
    make_session,
    run_bound,
)
from export.runtimes import OrtRunner


W = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
B = np.random.default_rng(1).normal(size=3).astype(np.float32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """y = relu(x · W + B) with a dynamic batch: small, but with something for the optimisers to fuse."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], W.ravel().tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], B.tolist())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("ort") / "tiny.onnx"
    onnx.save(model, path)
    return path


def expected(x):
    return np.maximum(x @ W + B, 0)


X = np.random.default_rng(1).random((5, 4), dtype=np.float32)


def test_cpu_session_reports_the_cpu_provider(model_path):
    made = make_session(model_path, device="cpu")
    assert made.providers == [CPU] == made.session.get_providers()
    assert made.fallback is None and not made.on_gpu
    np.testing.assert_allclose(made.session.run(None, {"x": X})[0], expected(X), rtol=1e-6, atol=1e-6)


def test_auto_reports_what_it_really_runs_on(model_path):
    made = make_session(model_path, device="auto")
    assert made.providers == made.session.get_providers()
    if cuda_available():
        assert made.providers[0] == CUDA and made.fallback is None
    else:
        assert made.providers == [CPU]
        assert made.fallback == f"CUDA not usable, running on CPU: {cuda_unavailable_reason()}"
        assert made.describe() == f"providers: {CPU} ({made.fallback})"


def test_cuda_runs_on_cuda_or_fails_with_the_reason(model_path):
    if cuda_available():
        made = make_session(model_path, device="cuda")
        assert made.providers[0] == CUDA and CPU not in made.providers
        return
    with pytest.raises(ExportError) as error:
        make_session(model_path, device="cuda")
    assert str(error.value) == f"CUDA execution provider is not usable here: {cuda_unavailable_reason()}"
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("level, ort_name", [("all", "ORT_ENABLE_ALL"), ("extended", "ORT_ENABLE_EXTENDED"),
                                             ("basic", "ORT_ENABLE_BASIC"), ("none", "ORT_DISABLE_ALL")])
def test_graph_optimisation_levels(model_path, level, ort_name):
    made = make_session(model_path, device="cpu", graph_optimization=level, threads=1)
    options = made.session.get_session_options()
    assert options.graph_optimization_level.name == ort_name
    assert options.intra_op_num_threads == 1
    np.testing.assert_allclose(made.session.run(None, {"x": X})[0], expected(X), rtol=1e-6, atol=1e-6)


def test_disabled_optimizers_and_options_reach_onnxruntime(model_path, monkeypatch):
    import onnxruntime as ort

    seen = {}
    real = ort.InferenceSession

    def spy(model, options, providers, **kwargs):
        seen.update(kwargs, providers=providers, options=options)
        return real(model, options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    make_session(model_path, device="cpu", disabled_optimizers=("MatMulAddFusion", "Pad_Fusion"), allow_spinning=False)
    assert seen["disabled_optimizers"] == ["MatMulAddFusion", "Pad_Fusion"]
    assert seen["providers"] == [CPU]
    assert seen["options"].get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("bad, match", [
    ({"device": "gpu"}, "unknown device 'gpu': use auto, cpu, cuda, tensorrt"),
    ({"graph_optimization": "max"}, "unknown graph optimisation level 'max'"),
    ({"cudnn_conv_algo_search": "FAST"}, "unknown cudnn_conv_algo_search 'FAST'"),
    ({"threads": -1}, "threads must be ≥ 0"),
    ({"device": "cpu", "tensorrt_fp16": True}, r"TensorRT options \(float16, engine cache\) need device tensorrt, not cpu"),
    ({"device": "cuda", "tensorrt_cache": "x"}, "need device tensorrt, not cuda"),
    ({"device": "auto", "cuda_graph": True}, "CUDA graphs need device cuda, not auto"),
    ({"device": "tensorrt", "cuda_graph": True}, "CUDA graphs need device cuda, not tensorrt"),
])
def test_bad_options_are_one_line_errors(model_path, bad, match):
    with pytest.raises(ExportError, match=match):
        make_session(model_path, **bad)


def test_unloadable_model_is_an_export_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="ONNX Runtime cannot load"):
        make_session(tmp_path / "bad.onnx", device="cpu")


def test_io_binding_gives_the_same_outputs(model_path):
    plain = OrtRunner(model_path, device="cpu")
    bound = OrtRunner(model_path, device="cpu", io_binding=True)
    np.testing.assert_array_equal(bound({"x": X})["y"], plain({"x": X})["y"])
    run = plain.bound({"x": X})
    run()
    run()
    np.testing.assert_array_equal(run.binding.copy_outputs_to_cpu()[0], plain({"x": X})["y"])
    np.testing.assert_array_equal(run_bound(plain.session, {"x": X})[0], plain({"x": X})["y"])


def test_tensorrt_runs_on_tensorrt_or_fails_with_the_reason(model_path, monkeypatch):
    """No silent fallback: device tensorrt runs on TensorRT (engines cached beside the model), or raises the probe's
    reason without ever making a session on another provider."""
    import onnxruntime as ort

    from export.atomic import read_manifest
    from export.ort_session import TENSORRT, tensorrt_available, tensorrt_unavailable_reason

    if tensorrt_available():
        made = make_session(model_path, device="tensorrt")
        assert made.providers[0] == TENSORRT and CPU not in made.providers
        assert read_manifest(model_path.parent / "tensorrt_cache")["kind"] == "tensorrt-cache"
        np.testing.assert_allclose(made.session.run(None, {"x": X})[0], expected(X), rtol=1e-5, atol=1e-5)
        return
    made_sessions = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: made_sessions.append(k) or real(*a, **k))
    with pytest.raises(ExportError) as error:
        make_session(model_path, device="tensorrt")
    assert str(error.value) == f"TensorRT execution provider is not usable here: {tensorrt_unavailable_reason()}"
    assert "\n" not in str(error.value) and not made_sessions
    if not cuda_available():  # the reason names what is really missing
        assert tensorrt_unavailable_reason().endswith(cuda_unavailable_reason())


def test_cuda_graphs_need_a_usable_cuda(model_path):
    if cuda_available():
        made = make_session(model_path, device="cuda", cuda_graph=True)
        assert made.providers[0] == CUDA and "CUDA graphs" in made.settings
        return
    with pytest.raises(ExportError, match="CUDA execution provider is not usable here"):
        make_session(model_path, device="cuda", cuda_graph=True)


def test_cuda_graph_runner_keeps_one_binding_per_shape(model_path):
    """CudaGraphs' bookkeeping, on CPU buffers (ORT ignores the graph ids there): one set of bound buffers per input
    shape, inputs copied in place on every call, outputs never aliased between calls, a bound on the shapes."""
    from export.ort_session import CudaGraphs

    graphs = CudaGraphs(make_session(model_path, device="cpu").session, device="cpu", max_graphs=2)
    rng = np.random.default_rng(2)
    first = rng.random((3, 4), dtype=np.float32)
    out_first = graphs({"x": first})[0]
    np.testing.assert_allclose(out_first, expected(first), rtol=1e-6, atol=1e-6)
    second = rng.random((3, 4), dtype=np.float32)
    out_second = graphs({"x": second})[0]
    np.testing.assert_allclose(out_second, expected(second), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_first, expected(first), rtol=1e-6, atol=1e-6)  # not overwritten by the replay
    assert len(graphs) == 1
    np.testing.assert_allclose(graphs({"x": X})[0], expected(X), rtol=1e-6, atol=1e-6)
    assert len(graphs) == 2
    with pytest.raises(ExportError, match="a new input shape \\(x 1×4\\) after 2 others"):
        graphs({"x": X[:1]})


def test_cuda_graph_capture_refusal_is_an_error():
    from export.ort_session import _check_graph_capture

    log = ("2026-01-01 00:00:00.0 [W:onnxruntime:, inference_session.cc:2345 Initialize] This session cannot use the "
           "graph capture feature as requested by the user as the model has control flow nodes which can't be "
           "supported by CUDAExecutionProvider\n")
    with pytest.raises(ExportError, match="CUDA graphs are not possible for m.onnx: This session cannot use the graph "
                                          "capture feature .* control flow nodes"):
        _check_graph_capture(log, "m.onnx")


def test_tensorrt_engine_cache_beside_the_model_keeps_the_export_folder_zoos(tmp_path, model_path):
    """The engine cache is a zoo folder inside the export folder, so re-exporting there needs no --overwrite."""
    from export.atomic import record_written, refusal_reason, write_manifest
    from export.ort_session import TENSORRT_CACHE, _tensorrt_cache_dir

    export = tmp_path / "export"
    export.mkdir()
    model = export / "model.onnx"
    model.write_bytes(model_path.read_bytes())
    write_manifest(export, {"kind": "export", "entries": {}})
    record_written(model)
    cache = _tensorrt_cache_dir(model, None)
    assert cache == export / TENSORRT_CACHE and cache.is_dir()
    (cache / "engine.bin").write_bytes(b"engine")  # what ORT adds there
    assert refusal_reason(export, "export") is None
    assert _tensorrt_cache_dir(b"model bytes", None) is None
    assert _tensorrt_cache_dir(model, tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_float16_models_are_recognised_for_tensorrt(tmp_path, model_path):
    from export.ort_session import _is_float16_model

    model = onnx.load(model_path)
    assert not _is_float16_model(model_path)
    helper.set_model_props(model, {"precision": "float16"})
    onnx.save(model, tmp_path / "half.onnx")
    assert _is_float16_model(tmp_path / "half.onnx") and _is_float16_model(model.SerializeToString())
