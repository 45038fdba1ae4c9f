"""`zoo serve`: a KServe v2 / Open Inference Protocol REST server for one ONNX model (protocol, batcher, app,
server), built on Starlette and uvicorn. Imported only by the `serve` command: `zoo --help` stays fast."""
