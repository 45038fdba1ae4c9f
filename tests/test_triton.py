"""`zoo export --triton REPO`: a Triton model repository whose config.pbtxt parses as Triton's own ModelConfig
protobuf (shipped in the tritonclient package) and agrees with the ONNX graph it sits beside."""

import filecmp

import numpy as np
import onnx
import pytest

from tests.helpers import assert_user_error, invoke


def parse_config(path):
    """config.pbtxt through Triton's ModelConfig message; an unknown field or a bad value raises."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def type_name(config_type):
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(config_type)


def onnx_tensors(path):
    graph = onnx.load(str(path), load_external_data=False).graph
    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
    return ([(v.name, v.type.tensor_type.elem_type, dims(v)) for v in graph.input],
            [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in graph.output])


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    from tests.serving_models import two_input_conv_bn

    path = tmp_path_factory.mktemp("triton") / "tiny net.keras"
    two_input_conv_bn().save(path)
    return path


@pytest.fixture(scope="module")
def exported(keras_file, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "models"
    out = keras_file.parent / "export"
    result = invoke("export", keras_file, "--fold-bn", "--no-savedmodel", "--out", out, "--triton", repo)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "FAIL" not in result.output
    assert "wrote Triton model 'tiny_net'" in result.output
    return out, repo


def test_repository_layout_and_model_copy(exported):
    out, repo = exported
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "tiny_net", "tiny_net/.zoo-manifest.json", "tiny_net/1", "tiny_net/1/model.onnx", "tiny_net/config.pbtxt"]
    assert filecmp.cmp(out / "model.onnx", repo / "tiny_net/1/model.onnx", shallow=False)


def test_config_parses_as_triton_model_config_and_matches_onnx(exported):
    from tritonclient.grpc import model_config_pb2

    out, repo = exported
    config = parse_config(repo / "tiny_net/config.pbtxt")
    assert config.name == "tiny_net" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 1)]
    onnx_inputs, onnx_outputs = onnx_tensors(out / "model.onnx")
    for tensors, declared in ((config.input, onnx_inputs), (config.output, onnx_outputs)):
        assert [t.name for t in tensors] == [name for name, _, _ in declared]
        for tensor, (_, elem_type, dims) in zip(tensors, declared):
            assert type_name(tensor.data_type) == "TYPE_" + {"FLOAT": "FP32"}[onnx.TensorProto.DataType.Name(elem_type)]
            assert dims[0] == -1 and list(tensor.dims) == dims[1:]  # batch dim left out
    assert [list(t.dims) for t in config.input] == [[8, 8, 2], [3]]
    assert [list(t.dims) for t in config.output] == [[5], [2]]


def test_repository_model_served_from_its_config_matches_the_keras_model(exported, keras_file):
    """The repository's model file, fed a KServe v2 request built from config.pbtxt alone (names, TYPE_FP32 →
    FP32, dims plus the batch), answers what the original Keras model computes."""
    from starlette.testclient import TestClient

    from export.runtimes import KerasRunner
    from tests.helpers import assert_parity
    from zoo.serving.app import create_app

    _, repo = exported
    config = parse_config(repo / "tiny_net/config.pbtxt")
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.normal(size=(3, *t.dims)).astype("float32") for t in config.input}
    request = {"inputs": [{"name": t.name, "shape": [3, *t.dims], "datatype": type_name(t.data_type)[5:],
                           "data": feeds[t.name].ravel().tolist()} for t in config.input]}
    with TestClient(create_app(repo / config.name / "1" / "model.onnx", name=config.name, device="cpu")) as client:
        response = client.post(f"/v2/models/{config.name}/infer", json=request)
    assert response.status_code == 200, response.text
    served = {o["name"]: np.asarray(o["data"], "float32").reshape(o["shape"]) for o in response.json()["outputs"]}
    assert sorted(served) == sorted(t.name for t in config.output)
    want = KerasRunner(keras_file)(feeds)  # the parity reference
    for name, value in served.items():
        assert_parity(np.asarray(want[name]), value)


def test_name_max_batch_zero_cpu_kind_and_replacing_a_model(exported, tmp_path):
    from tritonclient.grpc import model_config_pb2

    from export.triton import write_triton_repository

    out, _ = exported
    repo = tmp_path / "repo"
    write_triton_repository(out / "model.onnx", repo, "first try")
    model_dir = write_triton_repository(out / "model.onnx", repo, "first try", max_batch_size=0, instance_kind="cpu")
    assert model_dir == repo / "first_try" and sorted(p.name for p in repo.iterdir()) == ["first_try"]
    config = parse_config(model_dir / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in config.input] == [[-1, 8, 8, 2], [-1, 3]]  # full dims, batch dim dynamic
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_fixed_batch_and_scalar_per_row_models(tmp_path):
    """A model whose leading dim is fixed cannot be batched by Triton; a [N] output becomes dims [1] + reshape []."""
    from onnx import TensorProto, helper

    from export.triton import write_triton_repository

    def model(x_shape, y_shape, path):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
        y = helper.make_tensor_value_info("y", TensorProto.INT64, y_shape)
        node = helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)
        proto = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(proto, str(path))
        return path

    dynamic = write_triton_repository(model(["n", 4], ["n"], tmp_path / "a.onnx"), tmp_path / "repo", "argmax")
    config = parse_config(dynamic / "config.pbtxt")
    assert config.max_batch_size == 8 and list(config.input[0].dims) == [4]
    assert type_name(config.output[0].data_type) == "TYPE_INT64"
    assert list(config.output[0].dims) == [1] and config.output[0].HasField("reshape")
    assert list(config.output[0].reshape.shape) == []

    fixed = write_triton_repository(model([2, 4], [2], tmp_path / "b.onnx"), tmp_path / "repo", "fixed")
    config = parse_config(fixed / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [2, 4] and list(config.output[0].dims) == [2]


def test_external_weights_are_copied_and_load(exported, tmp_path):
    from export.runtimes import OrtRunner
    from export.triton import write_triton_repository

    out, _ = exported
    (tmp_path / "export").mkdir()
    path = tmp_path / "export" / "model.onnx"  # the layout export_onnx writes for > 1.5 GiB of weights
    onnx.save_model(onnx.load(str(out / "model.onnx")), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=64)
    assert (tmp_path / "export" / "model.onnx.data").is_file()
    model_dir = write_triton_repository(path, tmp_path / "repo", "big")
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    (tmp_path / "export" / "model.onnx.data").unlink()  # the repository's copy must stand on its own
    feeds = {"image": np.ones((1, 8, 8, 2), "float32"), "extra": np.ones((1, 3), "float32")}
    want = OrtRunner(out / "model.onnx", device="cpu")(feeds)
    got = OrtRunner(model_dir / "1" / "model.onnx", device="cpu")(feeds)
    np.testing.assert_array_equal(got["logits"], want["logits"])


def test_failure_leaves_nothing_half_written(exported, tmp_path, monkeypatch):
    import export.triton

    out, _ = exported
    repo = tmp_path / "repo"
    kept = export.triton.write_triton_repository(out / "model.onnx", repo, "kept")
    before = (kept / "config.pbtxt").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export.triton.shutil, "copyfile", broken)
    with pytest.raises(OSError, match="simulated"):
        export.triton.write_triton_repository(out / "model.onnx", repo, "kept", max_batch_size=2)
    assert sorted(p.name for p in repo.iterdir()) == ["kept"] and (kept / "config.pbtxt").read_text() == before
    with pytest.raises(OSError, match="simulated"):
        export.triton.write_triton_repository(out / "model.onnx", tmp_path / "new_repo", "x")
    assert not (tmp_path / "new_repo").exists()


def test_triton_path_that_is_a_file_is_one_line(keras_file, tmp_path):
    target = tmp_path / "repo"
    target.write_text("a file")
    assert_user_error(invoke("export", keras_file, "--triton", target, "--out", tmp_path / "exp"), "is a file")
    assert not (tmp_path / "exp").exists()
