"""Small models for the serving and Triton tests, built in the test run (no downloads, a few seconds)."""

import contextlib
import threading
import time
from pathlib import Path


def two_input_conv_bn():
    """image (N,8,8,2) + extra (N,3) -> logits (N,5), embedding (N,2): conv→BN→ReLU→pool, concat, two Dense heads.
    Two inputs and two outputs, so missing inputs and output selection can be tested."""
    import keras

    from tests.helpers import randomize_bn

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 2), name="image")
    extra = keras.Input((3,), name="extra")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Concatenate(name="concat")([x, extra])
    logits = keras.layers.Dense(5, name="logits")(x)
    embedding = keras.layers.Dense(2, name="embedding")(x)
    model = keras.Model([image, extra], [logits, embedding], name="two_input_conv_bn")
    randomize_bn(model)
    return model


def export_two_input_model(directory: Path) -> Path:
    """The model above, BN folded, as `directory/model.onnx`."""
    from export.fold_bn import fold_batchnorm
    from export.onnx import export_onnx

    folded, _ = fold_batchnorm(two_input_conv_bn())
    return export_onnx(folded, Path(directory) / "model.onnx")


def export_typed_model(directory: Path) -> Path:
    """ids INT64 (N,3) + mask BOOL (N,3) + scale FP16 (N,1) -> masked FP32 (N,3) = float(ids) * mask * scale: a
    model whose inputs are not FP32, built directly as ONNX (no Keras) so JSON type and range checks per datatype
    can be tested on a real server."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["scale"], ["scale_f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["ids_f", "mask_f"], ["masked_ids"]),
         helper.make_node("Mul", ["masked_ids", "scale_f"], ["masked"])],
        "typed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 3]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT16, ["N", 1])],
        [helper.make_tensor_value_info("masked", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(directory) / "typed.onnx"
    onnx.save(model, path)
    return path


@contextlib.contextmanager
def serving_in_thread(app, **server_options):
    """uvicorn (zoo's make_server) serving `app` on a free loopback port in a thread; yields the bound socket.
    Stops the server and closes the socket afterwards."""
    from zoo.serving.server import make_server, open_socket

    sock = open_socket("127.0.0.1", 0)
    server = make_server(app, **server_options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield sock
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive()
        sock.close()
