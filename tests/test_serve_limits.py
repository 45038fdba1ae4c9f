"""`zoo serve` under hostile or careless clients (issue 12): limits on flags and names, bounded work per request
(rows, chunks, memory), strict JSON (depth, NaN/Infinity, range, types, nesting), valid JSON out, connection
limits and timeouts, and a client that disconnects mid-body. On a model built here (tests/serving_models.py:
INT64 + BOOL + FP16 inputs, no Keras), in-process (Starlette's TestClient) and on loopback sockets (uvicorn in a
thread, with short timeouts so every wait is bounded)."""

import asyncio
import contextlib
import gc
import json
import logging
import resource
import selectors
import socket
import threading
import time

import numpy as np
import pytest

from tests.helpers import assert_user_error, invoke

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

READ_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 8
MAX_BATCH = 4
SECONDS_PER_ROW = 0.01


@pytest.fixture(scope="module")
def typed_path(tmp_path_factory):
    from tests.serving_models import export_typed_model

    return export_typed_model(tmp_path_factory.mktemp("typed"))


class SlowModel:
    """The typed model, taking SECONDS_PER_ROW per row of each run (so a run's cost grows with its rows, like a real
    model's) and recording the rows of every run."""

    def __init__(self, path):
        from zoo.serving.model import ServedModel

        self.model = ServedModel(path, device="cpu")
        self.spec, self.providers, self.runs = self.model.spec, self.model.providers, []

    def __call__(self, feeds):
        rows = len(feeds["ids"])
        self.runs.append(rows)
        time.sleep(SECONDS_PER_ROW * rows)
        return self.model(feeds)


@pytest.fixture(scope="module")
def slow_model(typed_path):
    return SlowModel(typed_path)


@pytest.fixture(scope="module")
def client(typed_path):
    from starlette.testclient import TestClient

    from zoo.serving.app import create_app

    app = create_app(typed_path, device="cpu", max_batch=MAX_BATCH, max_request_rows=64)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live(slow_model):
    """uvicorn serving the slow typed model on a free loopback port with short timeouts; yields (host, port)."""
    from tests.serving_models import serving_in_thread
    from zoo.serving.app import create_app

    app = create_app(None, model=slow_model, max_batch=MAX_BATCH, max_request_rows=256,
                     read_timeout_s=READ_TIMEOUT_S)
    with serving_in_thread(app, max_connections=MAX_CONNECTIONS, keep_alive_s=READ_TIMEOUT_S,
                           read_timeout_s=READ_TIMEOUT_S) as sock:
        yield sock.getsockname()[:2]


def typed_inputs(rows=1, seed=0):
    rng = np.random.default_rng(seed)
    return {"ids": rng.integers(-50, 50, size=(rows, 3)), "mask": rng.random((rows, 3)) > 0.5,
            "scale": rng.random((rows, 1)).astype("float16")}


def json_body(values, **overrides):
    types = {"ids": "INT64", "mask": "BOOL", "scale": "FP16"}
    inputs = [{"name": n, "shape": list(v.shape), "datatype": types[n], "data": v.reshape(-1).tolist()}
              for n, v in values.items()]
    for entry in inputs:
        entry.update(overrides.get(entry["name"], {}))
    return {"inputs": inputs}


def expected(values):
    return values["ids"].astype("float32") * values["mask"] * values["scale"].astype("float32")


def infer(client, body, **kwargs):
    return client.post("/v2/models/typed/infer", json=body, **kwargs)


# --- 5: flags and names ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [
    ("--max-body-mb", "inf"), ("--max-body-mb", "nan"), ("--max-body-mb", "0"), ("--max-request-rows", "0"),
    ("--max-connections", "0"), ("--keep-alive-s", "inf"), ("--read-timeout-s", "nan"), ("--read-timeout-s", "-1"),
    ("--batch-window-ms", "inf"),
])
def test_serve_refuses_limits_that_are_not_finite_positive_numbers(typed_path, flag, value):
    assert_user_error(invoke("serve", typed_path, flag, value, "--port", 0), flag)


@pytest.mark.parametrize("name", ["a/b", ".", "..", "my model", "caf\u00e9", "a%2Fb", "?x"])
def test_serve_refuses_names_no_url_can_reach(typed_path, name):
    assert_user_error(invoke("serve", typed_path, "--name", name, "--port", 0), "letters, digits, '_', '-' and '.'")


def test_names_that_fit_one_url_segment_are_served_as_they_are(typed_path):
    from urllib.parse import quote

    from starlette.testclient import TestClient

    from zoo.errors import ZooError
    from zoo.serving.app import create_app

    name = "My.model-v2_1"
    assert quote(name, safe="") == name  # what the start line prints
    with TestClient(create_app(typed_path, name=name, device="cpu")) as named:
        assert named.get(f"/v2/models/{name}").json()["name"] == name
        assert named.post(f"/v2/models/{name}/infer", json=json_body(typed_inputs())).status_code == 200
    with pytest.raises(ZooError, match="cannot be a model name in a URL"):
        create_app(typed_path, name="a/b", device="cpu")


# --- 6: bounded work per request ---------------------------------------------------------------------------------

def test_rows_over_the_limit_are_413_before_any_data_is_decoded(client):
    body = json_body(typed_inputs(), ids={"shape": [65, 3], "data": "never looked at"})
    response = infer(client, body)
    assert response.status_code == 413, response.text
    assert "65 rows" in response.json()["error"] and "at most 64" in response.json()["error"]
    assert "--max-request-rows" in response.json()["error"]
    header = {"inputs": [{"name": "ids", "shape": [10**6, 3], "datatype": "INT64",
                          "parameters": {"binary_data_size": 24}}]}  # declared, never sent
    head = json.dumps(header).encode()
    response = client.post("/v2/models/typed/infer", content=head + b"\0" * 24,
                           headers={"Inference-Header-Content-Length": str(len(head))})
    assert response.status_code == 413 and "1000000 rows" in response.json()["error"]
    assert infer(client, json_body(typed_inputs(rows=64))).status_code == 200


def test_a_large_request_runs_in_chunks_of_max_batch_and_answers_as_one(typed_path):
    from starlette.testclient import TestClient

    from zoo.serving.app import create_app

    model = SlowModel(typed_path)
    with TestClient(create_app(None, model=model, max_batch=MAX_BATCH, max_request_rows=64)) as chunked:
        values = typed_inputs(rows=10, seed=1)
        response = infer(chunked, json_body(values))
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        assert output["shape"] == [10, 3]
        np.testing.assert_allclose(np.reshape(output["data"], (10, 3)), expected(values), rtol=1e-3)
    assert model.runs == [4, 4, 2]  # chunks of at most --max-batch rows, in order


def test_a_small_request_does_not_wait_for_a_whole_large_one(live, slow_model):
    import httpx

    host, port = live
    large, small = typed_inputs(rows=80, seed=2), typed_inputs(rows=1, seed=3)  # 80 rows: 0.8 s of model time
    finished = {}

    def send(name, values, delay):
        time.sleep(delay)
        start = time.monotonic()
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=30) as http:
            response = http.post("/v2/models/typed/infer", json=json_body(values))
        finished[name] = (time.monotonic(), time.monotonic() - start, response)

    threads = [threading.Thread(target=send, args=("large", large, 0)),
               threading.Thread(target=send, args=("small", small, 0.15))]
    runs_before = len(slow_model.runs)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    (large_done, large_s, large_response), (small_done, small_s, small_response) = finished["large"], finished["small"]
    assert large_response.status_code == small_response.status_code == 200
    np.testing.assert_allclose(np.reshape(large_response.json()["outputs"][0]["data"], (80, 3)), expected(large),
                               rtol=1e-3)
    assert small_done < large_done and small_s < 0.4, (small_s, large_s)  # it waited for one chunk, not 80 rows
    assert max(slow_model.runs[runs_before:]) <= MAX_BATCH


def test_a_large_body_is_not_kept_alive_by_garbage(client):
    """The body of a request (refused or answered) is freed when its answer is sent, not at Python's next garbage
    collection: no reference cycle holds it (asyncio.wait_for around Starlette's body stream made one, and refused
    60 MB requests piled up in RSS)."""
    values = typed_inputs(rows=60000, seed=4)  # 60,000 rows: ~2 MB of binary data, refused (limit 64)
    blob = values["ids"].astype("<i8").tobytes()
    head = json.dumps({"inputs": [{"name": "ids", "shape": [60000, 3], "datatype": "INT64",
                                   "parameters": {"binary_data_size": len(blob)}}]}).encode()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(2):
            response = client.post("/v2/models/typed/infer", content=head + blob,
                                   headers={"Inference-Header-Content-Length": str(len(head))})
            assert response.status_code == 413
        gc.collect()
        holders = [type(o).__name__ for o in gc.garbage
                   if any(isinstance(r, bytearray) and len(r) > 2**20 for r in gc.get_referents(o))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not holders


def test_batcher_chunks_only_when_told_and_counts_requests_not_chunks():
    from zoo.serving.batcher import DynamicBatcher

    calls = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    async def main(chunk):
        batcher = DynamicBatcher(run, max_batch=3, chunk=chunk)
        await batcher.start()
        x = np.arange(8, dtype="float32").reshape(8, 1)
        result = await batcher.infer({"x": x}, 8)
        await batcher.stop()
        np.testing.assert_array_equal(result["y"], x * 2)
        return batcher.stats.to_dict()

    assert asyncio.run(main(True))["requests"] == 1 and calls == [3, 3, 2]
    calls.clear()
    assert asyncio.run(main(False))["requests"] == 1 and calls == [8]


# --- 7, 8, 10: strict JSON in, valid JSON out ----------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("body", [
    DEEP,
    b'{"inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": ' + DEEP + b"}]}",
    b'{"inputs": [], "parameters": {"x": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}}",
], ids=["bare", "in data", "in parameters"])
def test_json_nested_too_deeply_is_400_not_500(client, body):
    response = client.post("/v2/models/typed/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert "nested too deeply" in response.json()["error"]


@pytest.mark.parametrize("literal,fragment", [
    ("NaN", "NaN is not a JSON number"), ("Infinity", "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"), ("70000.0", "out of range for FP16"),
    ("1e39", "out of range for FP16"), ("1e400", "out of range for FP16"),
])
def test_non_finite_and_out_of_range_json_numbers_are_400(client, literal, fragment):
    body = json.dumps(json_body(typed_inputs(), scale={"data": ["X"]})).replace('"X"', literal)
    response = client.post("/v2/models/typed/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and fragment in response.json()["error"], response.text


def test_fp32_range_is_the_fp32_range():
    from zoo.serving.errors import ProtocolError
    from zoo.serving.tensor_json import decode

    fp32 = np.dtype("float32")
    assert decode([3.4e38, -1e-50, 7], "x", "FP32", fp32, (3,)).dtype == fp32
    for value in (1e39, -1e39, float("inf"), float("nan"), 10**400):
        with pytest.raises(ProtocolError, match="out of range for FP32"):
            decode([value], "x", "FP32", fp32, (1,))


def test_non_finite_outputs_go_out_as_strings_in_valid_json(client):
    import tritonclient.http as triton_http

    values = typed_inputs(rows=4, seed=5)
    values["ids"][:] = 1
    values["mask"][:] = True
    values["scale"][:, 0] = np.array([np.nan, np.inf, -np.inf, 2.0], "float16")
    header = {"inputs": [{"name": n, "shape": list(v.shape), "datatype": t,
                          "parameters": {"binary_data_size": v.nbytes}}
                         for (n, v), t in zip(values.items(), ("INT64", "BOOL", "FP16"))]}
    head = json.dumps(header).encode()
    body = head + b"".join(np.ascontiguousarray(v).tobytes() for v in values.values())
    response = client.post("/v2/models/typed/infer", content=body,
                           headers={"Inference-Header-Content-Length": str(len(head))})
    assert response.status_code == 200, response.text

    def strict(token):
        raise AssertionError(f"the response holds the bare token {token}")

    data = json.loads(response.content, parse_constant=strict)["outputs"][0]["data"]
    assert data == ["NaN"] * 3 + ["Infinity"] * 3 + ["-Infinity"] * 3 + [2.0] * 3
    got = triton_http.InferResult.from_response_body(response.content).as_numpy("masked")
    np.testing.assert_array_equal(got, np.repeat(np.array([np.nan, np.inf, -np.inf, 2.0], "float32")[:, None], 3, 1))


BAD_TYPES = {
    "bool in INT64": ({"ids": {"data": [True, 2, 3]}}, "integers for INT64, not true/false"),
    "decimal in INT64": ({"ids": {"data": [1.5, 2, 3]}}, "integers for INT64, not decimals"),
    "INT64 out of range": ({"ids": {"data": [2**63, 0, 0]}}, "out of range for INT64"),
    "int in BOOL": ({"mask": {"data": [1, 0, 1]}}, "true/false for BOOL, not integers"),
    "bool in FP16": ({"scale": {"data": [True]}}, "numbers for FP16, not true/false"),
    "string in FP16": ({"scale": {"data": ["1.5"]}}, "numbers for FP16, not strings"),
    "null in FP16": ({"scale": {"data": [None]}}, "numbers for FP16, not null"),
    "right count, wrong nesting": ({"ids": {"shape": [2, 3], "data": [[1, 2], [3, 4], [5, 6]]},
                                    "mask": {"shape": [2, 3], "data": [True] * 6},
                                    "scale": {"shape": [2, 1], "data": [1.0, 1.0]}}, "must match shape [2, 3]"),
    "nested deeper than the shape": ({"scale": {"data": [[[1.0]]]}}, "nested deeper than shape [1, 1]"),
    "half nested": ({"ids": {"shape": [2, 3], "data": [[1, 2, 3], 4]},
                     "mask": {"shape": [2, 3], "data": [True] * 6},
                     "scale": {"shape": [2, 1], "data": [1.0, 1.0]}}, "not a list where axis 1"),
}


@pytest.mark.parametrize("case", list(BAD_TYPES))
def test_json_types_and_nesting_must_fit_the_datatype_and_shape(client, case):
    overrides, fragment = BAD_TYPES[case]
    response = infer(client, json_body(typed_inputs(), **overrides))
    assert response.status_code == 400 and fragment in response.json()["error"], response.text


def test_flat_and_exactly_nested_data_of_every_type_are_accepted(client):
    values = {**typed_inputs(rows=2, seed=6), "scale": np.array([[1], [2.5]], "float16")}
    for nested in (False, True):
        body = json_body(values, **({n: {"data": v.tolist()} for n, v in values.items()} if nested else {}))
        body["inputs"][2]["data"] = [[1], [2.5]] if nested else [1, 2.5]  # an integer is a number for FP16
        response = infer(client, body)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.reshape(response.json()["outputs"][0]["data"], (2, 3)), expected(values))


# --- 9: connections ------------------------------------------------------------------------------------------------

def _closed_within(socks, seconds):
    """The sockets of `socks` the server closed within `seconds` (EOF or reset)."""
    selector, closed = selectors.DefaultSelector(), set()
    for s in socks:
        selector.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while len(closed) < len(socks) and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            try:
                data = key.fileobj.recv(65536)
            except ConnectionError:
                data = b""
            if not data:
                closed.add(key.fileobj)
                selector.unregister(key.fileobj)
    selector.close()
    return closed


def _get(address, path="/v2/health/live", timeout=10):
    import httpx

    return httpx.get(f"http://{address[0]}:{address[1]}{path}", timeout=timeout)


def test_idle_and_slow_header_connections_are_closed_after_the_read_timeout(live):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    idle_count = max(50, min(1000, (soft - 300) // 2))  # client and server ends share this process's files
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(socket.create_connection(live)) for _ in range(idle_count)]
        slow = [stack.enter_context(socket.create_connection(live)) for _ in range(50)]
        start = time.monotonic()
        for step in range(8):  # a header byte every 0.1 s, never the end of the headers
            for s in slow:
                s.sendall(b"POST /v2/models/typed/infer HTTP/1.1\r\nx-slow: " if not step else b"a")
            time.sleep(0.1)
        closed = _closed_within(idle + slow, READ_TIMEOUT_S + 3)
        elapsed = time.monotonic() - start
    assert len(closed) == idle_count + 50, f"{len(closed)} of {idle_count + 50} closed"
    assert elapsed < READ_TIMEOUT_S + 3.5
    assert _get(live).status_code == 200


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive(live):
    with socket.create_connection(live) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert _closed_within([s], READ_TIMEOUT_S + 3) == {s}
        assert 0.5 * READ_TIMEOUT_S < time.monotonic() - start


def test_past_max_connections_a_request_gets_503_json(live):
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):
            stack.enter_context(socket.create_connection(live))
        time.sleep(0.2)  # the server has accepted them
        response = _get(live, "/v2/models/typed")
    assert response.status_code == 503 and response.headers["content-type"] == "application/json"
    assert "--max-connections" in response.json()["error"]
    time.sleep(0.2)
    assert _get(live, "/v2/models/typed").status_code == 200


def test_a_stalled_body_is_408_json(live):
    with socket.create_connection(live) as s:
        s.sendall(b"POST /v2/models/typed/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 1000\r\n\r\n" + b" " * 100)
        s.settimeout(READ_TIMEOUT_S + 5)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head
    assert "--read-timeout-s" in json.loads(body)["error"]


def test_endless_headers_are_431_json(live):
    from zoo.serving.connections import MAX_HEADER_BYTES

    with socket.create_connection(live) as s:
        s.sendall(b"GET /v2 HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (MAX_HEADER_BYTES + 1000))
        s.settimeout(READ_TIMEOUT_S / 2)  # well before the header deadline would close it
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"application/json" in head, answer[:200]
    assert "exceed" in json.loads(body)["error"]


# --- 11: a client that goes away -----------------------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_client_disconnecting_mid_body_is_one_log_line(live):
    records = _Records()
    loggers = [logging.getLogger("zoo.serving"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with socket.create_connection(live) as s:
            s.sendall(b"POST /v2/models/typed/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: 1000\r\n\r\n" + b"{" * 100)
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while not records.records and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    lines = [(r.name, r.levelname, r.getMessage()) for r in records.records]
    assert len(lines) == 1, lines
    name, level, message = lines[0]
    assert name == "zoo.serving" and level == "WARNING"
    assert "disconnected before the request body was complete" in message
    assert not any(r.exc_info for r in records.records)
    assert _get(live).status_code == 200

