"""`zoo serve`: the KServe v2 REST API in-process (Starlette's TestClient) and on real loopback sockets (uvicorn in a
thread, and `zoo serve` in a subprocess), checked against a direct ONNX Runtime run of the same model, with a client
nobody here wrote (tritonclient.http)."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import assert_user_error, invoke

# starlette >= 1.x prefers the `httpx2` fork for its TestClient; plain httpx (also the async client below) still works
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

SHAPES = {"image": (8, 8, 2), "extra": (3,)}


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    from tests.serving_models import export_two_input_model

    return export_two_input_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def ort(onnx_path):
    from export.runtimes import OrtRunner

    return OrtRunner(onnx_path, device="cpu")


@pytest.fixture(scope="module")
def client(onnx_path):
    from starlette.testclient import TestClient

    from zoo.serving.app import create_app

    with TestClient(create_app(onnx_path, name="tiny", device="cpu")) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live_server(onnx_path):
    """uvicorn serving the model on a free loopback port, in a thread; yields (host:port, app)."""
    from tests.serving_models import serving_in_thread
    from zoo.serving.app import create_app

    app = create_app(onnx_path, name="tiny", device="cpu", max_batch=16)
    with serving_in_thread(app) as sock:
        yield f"127.0.0.1:{sock.getsockname()[1]}", app


def feeds(rows=1, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(rows, *shape)).astype("float32") for name, shape in SHAPES.items()}


def json_inputs(values, nested=False):
    return [{"name": n, "shape": list(v.shape), "datatype": "FP32",
             "data": v.tolist() if nested else v.reshape(-1).tolist()} for n, v in values.items()]


def outputs_of(response_json):
    return {o["name"]: np.asarray(o["data"], "float32").reshape(o["shape"]) for o in response_json["outputs"]}


def assert_close(got, want):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-5)


# --- endpoints ---------------------------------------------------------------------------------------------------

def test_server_metadata_and_health(client):
    meta = client.get("/v2").json()
    assert meta["name"] == "zoo" and "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_model_metadata_lists_kserve_types_and_dynamic_dims(client):
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 2]},
                              {"name": "extra", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]},
                               {"name": "embedding", "datatype": "FP32", "shape": [-1, 2]}]
    assert client.get("/v2/models/tiny/versions/1").json() == meta
    assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200


@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"), ("POST", "/v2/models/nope/infer"),
    ("GET", "/v2/models/tiny/versions/2"), ("POST", "/v2/models/tiny/versions/2/infer"), ("GET", "/v2/nothing"),
])
def test_unknown_model_version_or_path_is_404_with_error(client, method, path):
    response = client.request(method, path, json={"inputs": []})
    assert response.status_code == 404
    assert response.json()["error"]


def test_infer_json_flat_and_nested_equals_ort(client, ort):
    values = feeds(rows=3, seed=1)
    for nested in (False, True):
        body = {"id": "req-7", "parameters": {"note": "ignored"}, "inputs": json_inputs(values, nested)}
        response = client.post("/v2/models/tiny/infer", json=body)
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["id"] == "req-7" and data["model_name"] == "tiny" and data["model_version"] == "1"
        assert [o["datatype"] for o in data["outputs"]] == ["FP32", "FP32"]
        assert_close(outputs_of(data), ort(values))


def test_infer_returns_only_the_requested_outputs(client, ort):
    values = feeds(seed=2)
    body = {"inputs": json_inputs(values), "outputs": [{"name": "embedding"}]}
    data = client.post("/v2/models/tiny/infer", json=body).json()
    assert [o["name"] for o in data["outputs"]] == ["embedding"] and "id" not in data
    np.testing.assert_allclose(outputs_of(data)["embedding"], ort(values)["embedding"], atol=1e-5)


def test_binary_tensor_data_in_and_out(client, ort):
    values = feeds(rows=2, seed=3)
    header = {"inputs": [{"name": n, "shape": list(v.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": v.nbytes}} for n, v in values.items()],
              "outputs": [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "embedding"}]}
    head = json.dumps(header).encode()
    body = head + b"".join(v.tobytes() for v in values.values())
    response = client.post("/v2/models/tiny/infer", content=body,
                           headers={"Inference-Header-Content-Length": str(len(head))})
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    data = json.loads(response.content[:length])
    logits_entry, embedding_entry = data["outputs"]
    size = logits_entry["parameters"]["binary_data_size"]
    assert size == len(response.content) - length == 2 * 5 * 4
    logits = np.frombuffer(response.content[length:], "<f4").reshape(logits_entry["shape"])
    want = ort(values)
    np.testing.assert_allclose(logits, want["logits"], atol=1e-5)
    np.testing.assert_allclose(np.reshape(embedding_entry["data"], (2, 2)), want["embedding"], atol=1e-5)


# --- bad requests ------------------------------------------------------------------------------------------------

def _valid():
    return {"inputs": json_inputs(feeds())}


def _with(index, **changes):
    body = _valid()
    body["inputs"][index].update(changes)
    return body


BAD_REQUESTS = {
    "wrong rank": (_with(0, shape=[8, 8, 2]), "rank 3"),
    "wrong fixed dim": (_with(0, shape=[1, 8, 4, 4]), "axis 2 must be 8"),
    "zero dim": (_with(1, shape=[0, 3], data=[]), "at least 1"),
    "wrong datatype": (_with(0, datatype="INT64"), "expects FP32"),
    "unknown datatype": (_with(0, datatype="FLOAT"), "not a KServe v2 datatype"),
    "unknown input": (_with(1, name="extras"), "unknown input 'extras'"),
    "missing input": ({"inputs": _valid()["inputs"][:1]}, "missing input(s) 'extra'"),
    "duplicate input": ({"inputs": _valid()["inputs"] + _valid()["inputs"][:1]}, "given twice"),
    "element count": (_with(1, data=[1.0, 2.0]), "has 2 elements but shape [1, 3] needs 3"),
    "ragged data": (_with(1, data=[[1.0, 2.0], [3.0]]), "ragged"),
    "strings as data": (_with(1, data=["a", "b", "c"]), "must hold numbers"),
    "no data": ({"inputs": [{k: v for k, v in i.items() if k != "data"} for i in _valid()["inputs"]]}, "no \"data\""),
    "batch mismatch": (_with(1, shape=[2, 3], data=[0.0] * 6), "disagree on the batch size"),
    "no inputs": ({"inputs": []}, "non-empty \"inputs\""),
    "not an object": ([1, 2], "JSON object"),
    "unknown output": ({**_valid(), "outputs": [{"name": "probs"}]}, "unknown output 'probs'"),
    "data and binary size": (_with(1, parameters={"binary_data_size": 12}), "both \"data\" and"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_400_with_a_message(client, case):
    body, fragment = BAD_REQUESTS[case]
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_malformed_json_is_400(client):
    response = client.post("/v2/models/tiny/infer", content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


@pytest.mark.parametrize("sizes,extra,header_delta,fragment", [
    ((512, 11), b"", 0, "binary_data_size is 11 bytes but shape [1, 3] of FP32 needs 12"),
    ((512, 12), b"\0" * 4, 0, "binary_data_size add up to 524"),
    ((512, 12), b"", 10**6, "Inference-Header-Content-Length"),
], ids=["size vs shape", "extra bytes", "header length"])
def test_bad_binary_sizes_are_400(client, sizes, extra, header_delta, fragment):
    values = feeds()
    header = {"inputs": [{"name": n, "shape": list(v.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": s}} for (n, v), s in zip(values.items(), sizes)]}
    head = json.dumps(header).encode()
    body = head + b"".join(v.tobytes() for v in values.values()) + extra
    response = client.post("/v2/models/tiny/infer", content=body,
                           headers={"Inference-Header-Content-Length": str(len(head) + header_delta)})
    assert response.status_code == 400 and fragment in response.json()["error"], response.text


def test_oversized_body_is_413(onnx_path):
    from starlette.testclient import TestClient

    from zoo.serving.app import create_app

    with TestClient(create_app(onnx_path, name="tiny", device="cpu", max_body_bytes=4096)) as small:
        response = small.post("/v2/models/tiny/infer", json={"inputs": json_inputs(feeds(rows=8))})
        assert response.status_code == 413 and "exceeds the limit of 4096 bytes" in response.json()["error"]
        assert small.post("/v2/models/tiny/infer", json=_valid()).status_code == 200


# --- the batcher on its own ----------------------------------------------------------------------------------------

def test_batcher_groups_same_shapes_keeps_order_and_isolates_failures():
    from zoo.serving.batcher import DynamicBatcher

    calls = []

    def run(batch):
        x = batch["x"]
        calls.append(x.shape)
        if np.isnan(x).any():
            raise ValueError("nan in input")
        return {"y": x * 2, "s": x.sum(axis=tuple(range(1, x.ndim)))}

    async def main():
        batcher = DynamicBatcher(run, max_batch=4, window_s=0.01)
        await batcher.start()
        shapes = [(1, 3), (1, 5), (2, 3), (1, 3), (1, 5), (3, 3)]
        inputs = [np.full(shape, i, "float32") for i, shape in enumerate(shapes)]
        inputs.append(np.array([[np.nan, 1, 2]], "float32"))
        results = await asyncio.gather(*(batcher.infer({"x": x}, x.shape[0]) for x in inputs),
                                       return_exceptions=True)
        await batcher.stop()
        return inputs, results, batcher.stats.to_dict()

    inputs, results, stats = asyncio.run(main())
    for x, result in zip(inputs[:-1], results[:-1]):
        np.testing.assert_array_equal(result["y"], x * 2)
        np.testing.assert_array_equal(result["s"], x.sum(axis=1))
    assert isinstance(results[-1], ValueError)
    assert stats["requests"] == 7 and stats["largest_batch"] == 4
    assert max(rows for rows, _ in calls) <= 4 and (4, 3) in calls  # (1,3)+(2,3)+(1,3) stacked, (3,3) later


# --- real sockets: concurrency, tritonclient, the CLI --------------------------------------------------------------

def test_200_concurrent_requests_all_correct_and_batched(live_server, ort):
    import httpx

    address, app = live_server
    requests = [feeds(rows=1 + i % 3, seed=100 + i) for i in range(200)]
    before = app.state.batcher.stats.to_dict()

    async def main():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=f"http://{address}", limits=limits, timeout=60) as http:
            async def one(i, values):
                response = await http.post("/v2/models/tiny/infer", json={"id": str(i), "inputs": json_inputs(values)})
                return response.status_code, response.json()
            return await asyncio.gather(*(one(i, v) for i, v in enumerate(requests)))

    answers = asyncio.run(main())
    assert [status for status, _ in answers] == [200] * 200
    for i, (values, (_, data)) in enumerate(zip(requests, answers)):
        assert data["id"] == str(i)
        assert_close(outputs_of(data), ort(values))
    after = app.state.batcher.stats.to_dict()
    runs = after["runs"] - before["runs"]
    assert after["requests"] - before["requests"] == 200 and runs < 200  # requests were stacked
    assert after["largest_batch"] <= 16


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_against_the_server(live_server, ort, binary):
    import tritonclient.http as triton_http

    address, _ = live_server
    triton = triton_http.InferenceServerClient(url=address)
    try:
        assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("tiny")
        meta = triton.get_model_metadata("tiny")
        assert [i["name"] for i in meta["inputs"]] == ["image", "extra"] and meta["platform"] == "onnxruntime_onnx"
        values = feeds(rows=4, seed=7)
        inputs = []
        for name, value in values.items():
            tensor = triton_http.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value, binary_data=binary)
            inputs.append(tensor)
        outputs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "embedding")]
        result = triton.infer("tiny", inputs, outputs=outputs, request_id="tc-1")
        assert result.get_response()["id"] == "tc-1"
        want = ort(values)
        assert_close({n: result.as_numpy(n) for n in want}, want)
        if binary:
            assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
        with pytest.raises(Exception, match="unknown model"):
            triton.get_model_metadata("nope")
    finally:
        triton.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zoo_serve_subprocess_answers_then_stops_cleanly_on_sigterm(onnx_path):
    import httpx

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "zoo.cli", "serve", str(onnx_path), "--port", "0",
                                "--device", "cpu", "--name", "tiny"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    try:
        first = process.stdout.readline()
        assert first.startswith("serving tiny (") and "providers: CPUExecutionProvider" in first, first
        url = first.split(" on ", 1)[1].split(" ", 1)[0]
        response = httpx.post(f"{url}/v2/models/tiny/infer", json=_valid(), timeout=30)
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, out
    assert "stopped on SIGTERM after 1 requests" in out and "Traceback" not in out


def test_serve_bad_input_is_one_line(onnx_path, tmp_path):
    assert_user_error(invoke("serve", tmp_path / "missing.onnx"), "does not exist")
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"not onnx")
    assert_user_error(invoke("serve", keras_file), "is not an .onnx file")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"garbage")
    assert_user_error(invoke("serve", corrupt, "--port", _free_port()), "cannot load")
    assert_user_error(invoke("serve", onnx_path, "--max-batch", 0), "--max-batch")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert_user_error(invoke("serve", onnx_path, "--port", busy.getsockname()[1]), "already in use")


def test_gpu_options_are_checked_and_never_fall_back_to_the_cpu(onnx_path):
    """--cuda-graph and --tensorrt-fp16 belong to their device; a GPU device that cannot run is one error line,
    never a server on the CPU."""
    from export.ort_session import cuda_available, tensorrt_available

    assert_user_error(invoke("serve", onnx_path, "--cuda-graph"), "--cuda-graph needs --device cuda", "not --device auto")
    assert_user_error(invoke("serve", onnx_path, "--device", "tensorrt", "--cuda-graph"), "--cuda-graph needs --device cuda")
    assert_user_error(invoke("serve", onnx_path, "--tensorrt-fp16", "--device", "cuda"),
                      "--tensorrt-fp16 applies to --device tensorrt, not --device cuda")
    if not cuda_available():
        assert_user_error(invoke("serve", onnx_path, "--device", "cuda", "--cuda-graph", "--port", _free_port()),
                          "CUDA execution provider is not usable here")
    if not tensorrt_available():
        assert_user_error(invoke("serve", onnx_path, "--device", "tensorrt", "--port", _free_port()),
                          "TensorRT execution provider is not usable here")


def test_cuda_graphs_need_inputs_fixed_apart_from_the_batch():
    from export.tensor_types import from_ort
    from zoo.errors import ZooError
    from zoo.serving.model import check_cuda_graph_shapes
    from zoo.serving.protocol import ModelSpec, TensorSpec

    f32 = from_ort("tensor(float)")
    out = (TensorSpec("logits", f32, (-1, 10)),)
    check_cuda_graph_shapes(ModelSpec("m", (TensorSpec("image", f32, (-1, 28, 28, 1)),), out))  # one graph per batch
    check_cuda_graph_shapes(ModelSpec("m", (TensorSpec("image", f32, (1, 28, 28, 1)),), out))
    with pytest.raises(ZooError, match="--cuda-graph needs inputs whose sizes are fixed apart from the batch .* "
                                       "input 'image' is \\?×\\?×\\?×3: serve without --cuda-graph"):
        check_cuda_graph_shapes(ModelSpec("m", (TensorSpec("image", f32, (-1, -1, -1, 3)),), out))


def test_cpu_serving_is_unchanged_by_the_gpu_paths(onnx_path):
    from zoo.serving.model import ServedModel

    served = ServedModel(onnx_path, device="cpu")
    assert served.runner.io_binding is False and served.runner.settings == () and served.runner._graphs is None
