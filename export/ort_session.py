"""The one place zoo creates ONNX Runtime sessions: `make_session` (every command and runner goes through it).

Why one factory: provider choice, CUDA library loading, "never fall back silently" and the session options have to
be the same for parity, bench and serving, or a benchmark would time a different session than the one checked.

- Providers, in order of preference: TensorRT (only with `tensorrt=True`) → CUDA → CPU.
- `onnxruntime.preload_dlls()` (ORT ≥ 1.21) loads CUDA / cuDNN from the nvidia-* pip packages when they are there.
- device "cuda": the session must run on CUDA. When CUDA cannot run here the error is an ExportError with the real
  cause (`cuda_unavailable_reason`: onnxruntime-gpu lists CUDAExecutionProvider as available even without the CUDA
  libraries, then logs the cause and runs on CPU). The session is created with `session.disable_cpu_ep_fallback`
  and without the CPU provider, so a graph CUDA cannot fully run is refused by ORT instead of being split onto the
  CPU behind the user's back.
- device "auto": CUDA when it really runs, else CPU; `OrtSession.fallback` says why it is not on CUDA.
- device "cpu": CPU only.
The providers actually in use (`session.get_providers()`) are always returned, never the ones asked for.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError, first_line

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "none")
CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


@dataclass
class OrtSession:
    """A session and what it really runs on."""

    session: Any  # onnxruntime.InferenceSession
    providers: list[str]  # session.get_providers(): the providers in use, preferred first
    fallback: str | None = None  # device "auto" (or tensorrt=True) that did not get what it preferred: why

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in (CUDA, TENSORRT)

    def describe(self) -> str:
        """'providers: CPUExecutionProvider (CUDA not usable: …)'"""
        text = f"providers: {', '.join(self.providers)}"
        return text + (f" ({self.fallback})" if self.fallback else "")


def make_session(
    path: Path | str | bytes,
    *,
    device: str = "auto",
    tensorrt: bool = False,
    graph_optimization: str = "all",
    threads: int = 0,
    cudnn_conv_algo_search: str = "EXHAUSTIVE",
    disabled_optimizers: Sequence[str] = (),
    allow_spinning: bool = True,
) -> OrtSession:
    """An ONNX Runtime session for the model at `path` (or serialized model bytes) on `device`.

    `graph_optimization`: ORT's graph optimisation level. `threads`: intra-op threads (0: ORT's default, one per
    core). `cudnn_conv_algo_search`: the CUDA provider's convolution algorithm search (EXHAUSTIVE is fastest once
    warmed up, slow on the first run of each shape). `disabled_optimizers`: ORT graph rewrites to switch off by
    name (e.g. "Pad_Fusion"). `allow_spinning=False`: idle worker threads sleep instead of spinning, which matters
    when several sessions take turns on few cores (benchmarks).
    """
    import onnxruntime as ort

    check_device_name(device)
    if graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise ExportError(f"unknown graph optimisation level {graph_optimization!r}: use {', '.join(GRAPH_OPTIMIZATIONS)}")
    if cudnn_conv_algo_search not in CONV_ALGO_SEARCHES:
        raise ExportError(f"unknown cudnn_conv_algo_search {cudnn_conv_algo_search!r}: use {', '.join(CONV_ALGO_SEARCHES)}")
    if threads < 0:
        raise ExportError(f"threads must be ≥ 0 (0: ONNX Runtime's default), not {threads}")
    if tensorrt and device == "cpu":
        raise ExportError("TensorRT needs device cuda or auto, not cpu")

    fallback = None
    gpu: list[Any] = []
    if device != "cpu":
        reason = cuda_unavailable_reason()
        if reason is None:
            if tensorrt and TENSORRT in ort.get_available_providers():
                gpu.append(TENSORRT)
            elif tensorrt:
                fallback = f"TensorRT not used: onnxruntime {ort.__version__} has no {TENSORRT}"
            gpu.append((CUDA, {"cudnn_conv_algo_search": cudnn_conv_algo_search}))
        elif device == "cuda":
            raise ExportError(f"CUDA execution provider is not usable here: {reason}")
        else:
            fallback = f"CUDA not usable, running on CPU: {reason}"
    providers = gpu if device == "cuda" else [*gpu, CPU]

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[graph_optimization]
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device == "cuda":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    model = path if isinstance(path, bytes) else str(path)
    try:
        session = ort.InferenceSession(model, options, providers=providers, **extra)
    except Exception as e:
        where = "the model" if isinstance(path, bytes) else path
        if device == "cuda":
            raise ExportError(f"ONNX Runtime cannot run {where} on CUDA alone: {first_line(e)}") from e
        raise ExportError(f"ONNX Runtime cannot load {where}: {first_line(e)}") from e
    in_use = session.get_providers()
    if device == "cuda" and in_use[0] not in (CUDA, TENSORRT):
        raise ExportError(f"CUDA execution provider is not usable here: the session runs on {in_use[0]}")
    if tensorrt and fallback is None and in_use[0] != TENSORRT:
        fallback = f"TensorRT not used: the session runs on {in_use[0]}"
    return OrtSession(session, in_use, fallback)


def ort_device(providers: Sequence[str]) -> str:
    """The OrtValue device name ("cuda" or "cpu") where a session with these providers keeps its tensors."""
    return "cuda" if providers and providers[0] in (CUDA, TENSORRT) else "cpu"


def bind(session: Any, feeds: dict[str, np.ndarray], *, device: str = "cpu") -> Callable[[], None]:
    """IO binding: copy `feeds` to `device` once and bind every output to `device`; returns a call that runs the
    session on the bound tensors (outputs stay on the device: `binding.copy_outputs_to_cpu()` fetches them).

    On CUDA this takes the host↔device copies out of each run (what a server that keeps tensors on the GPU pays);
    on CPU it binds CPU memory and changes little."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, device, 0)

    def run() -> None:
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    run.binding = binding  # type: ignore[attr-defined]
    return run


def run_bound(session: Any, feeds: dict[str, np.ndarray], *, device: str = "cpu") -> list[np.ndarray]:
    """One run through IO binding with numpy in and out (inputs copied to `device`, outputs copied back)."""
    run = bind(session, feeds, device=device)
    run()
    return run.binding.copy_outputs_to_cpu()  # type: ignore[attr-defined]


def check_device_name(device: str) -> str:
    """The one check of a device name (export/runtime_table.py `check_device` adds whether CUDA really runs)."""
    if device not in DEVICES:
        raise ExportError(f"unknown device {device!r}: use {', '.join(DEVICES)}")
    return device


def cuda_available() -> bool:
    """True when ONNX Runtime can really create and run a session on the CUDA execution provider."""
    return cuda_unavailable_reason() is None


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """Why ONNX Runtime cannot run on CUDA here (None when it can), found by running a one-node model with
    CPU fallback disabled. ORT reports the real cause (a missing libcublas…) only on the process' stderr, so that
    is captured while probing. Cached: the answer does not change within a process."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDA execution provider (install onnxruntime-gpu)"
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with _captured_process_output() as captured:
        if hasattr(ort, "preload_dlls"):  # loads CUDA/cuDNN from the nvidia-* wheels when they are installed
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        try:
            session = ort.InferenceSession(_probe_model(), options, providers=[CUDA])
            session.run(None, {"x": np.ones((1,), np.float32)})
            return None
        except Exception as e:
            error = first_line(e)
    return _load_failure(captured.getvalue()) or error


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "cuda_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _load_failure(log: str) -> str | None:
    """The useful part of ORT's provider-loading log, e.g. 'libcublasLt.so.13: cannot open shared object file'."""
    for line in log.splitlines():
        if "with error: " in line:
            return line.split("with error: ", 1)[1].strip()
    for line in log.splitlines():
        if "Failed to create CUDAExecutionProvider" in line:
            return line[line.index("Failed to create") :].split(" Please install")[0].strip()
    return None


@contextlib.contextmanager
def _captured_process_output() -> Iterator[io.StringIO]:
    """Capture what native code writes to file descriptors 1 and 2 (and Python's sys.stdout/stderr) meanwhile."""
    import sys

    captured = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.write(sink.read().decode(errors="replace"))
