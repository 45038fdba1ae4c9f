"""The one place zoo creates ONNX Runtime sessions: `make_session` (every command and runner goes through it).

Why one factory: provider choice, CUDA library loading, "never fall back silently" and the session options have to
be the same for parity, bench and serving, or a benchmark would time a different session than the one checked.

- Devices: "cpu", "cuda", "tensorrt" (ORT's TensorRT execution provider, CUDA for what TensorRT does not take) and
  "auto" (CUDA when it really runs, else the CPU; never TensorRT, whose engines take minutes to build).
- `onnxruntime.preload_dlls()` (ORT ≥ 1.21) loads CUDA / cuDNN from the nvidia-* pip packages when they are there;
  `preload_tensorrt()` loads TensorRT from the `tensorrt` pip packages (`site-packages/tensorrt_libs`).
- device "cuda": the session must run on CUDA. When CUDA cannot run here the error is an ExportError with the real
  cause (`cuda_unavailable_reason`: onnxruntime-gpu lists CUDAExecutionProvider as available even without the CUDA
  libraries, then logs the cause and runs on CPU). The session is created with `session.disable_cpu_ep_fallback`
  and without the CPU provider, so a graph CUDA cannot fully run is refused by ORT instead of being split onto the
  CPU behind the user's back.
- device "tensorrt": the same rule, with `tensorrt_unavailable_reason`: the session runs on TensorRT (and CUDA for
  the nodes TensorRT does not take, never the CPU) or the error says why not. Engines and TensorRT's timing cache
  are kept in `tensorrt_cache/` beside the model (a zoo folder, so an export folder holding one stays zoo's), so
  only the first session of a model and shape pays the build. `tensorrt_fp16`: TensorRT may pick float16 kernels
  (on by default for a model export/fp16.py wrote, off for a float32 one: it changes the numerics).
- device "auto": CUDA when it really runs, else CPU; `OrtSession.fallback` says why it is not on CUDA.
- device "cpu": CPU only.
- `cuda_graph=True` (device cuda): CUDA graphs, replayed by `CudaGraphs` through IO binding; a model ORT cannot
  capture (nodes off CUDA, control flow) is an ExportError, not a session that quietly runs without them.
The providers actually in use (`session.get_providers()`) are always returned, never the ones asked for.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
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
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
GPU_DEVICES = ("cuda", "tensorrt")  # devices that must run there or fail: never a silent CPU fallback
TENSORRT_CACHE = "tensorrt_cache"  # engines and TensorRT's timing cache, beside the model
TENSORRT_CACHE_KIND = "tensorrt-cache"  # its zoo manifest's kind (export/atomic.py)
TENSORRT_LIBRARIES = ("libnvinfer.so", "libnvinfer_plugin.so", "libnvonnxparser.so")  # load order
GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "none")
CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


@dataclass
class OrtSession:
    """A session and what it really runs on."""

    session: Any  # onnxruntime.InferenceSession
    providers: list[str]  # session.get_providers(): the providers in use, preferred first
    fallback: str | None = None  # device "auto" that did not get CUDA: why
    settings: tuple[str, ...] = ()  # what else shapes the session: "TensorRT float16", "CUDA graphs", …

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in (CUDA, TENSORRT)

    def describe(self) -> str:
        """'providers: CPUExecutionProvider (CUDA not usable: …)'"""
        text = f"providers: {', '.join(self.providers)}"
        text += "".join(f", {setting}" for setting in self.settings)
        return text + (f" ({self.fallback})" if self.fallback else "")


def make_session(
    path: Path | str | bytes,
    *,
    device: str = "auto",
    graph_optimization: str = "all",
    threads: int = 0,
    cudnn_conv_algo_search: str = "EXHAUSTIVE",
    disabled_optimizers: Sequence[str] = (),
    allow_spinning: bool = True,
    tensorrt_fp16: bool | None = None,
    tensorrt_cache: Path | str | None = None,
    cuda_graph: bool = False,
    optimized_model_path: Path | str | None = None,
) -> OrtSession:
    """An ONNX Runtime session for the model at `path` (or serialized model bytes) on `device`.

    `graph_optimization`: ORT's graph optimisation level. `threads`: intra-op threads (0: ORT's default, one per
    core). `cudnn_conv_algo_search`: the CUDA provider's convolution algorithm search (EXHAUSTIVE is fastest once
    warmed up, slow on the first run of each shape). `disabled_optimizers`: ORT graph rewrites to switch off by
    name (e.g. "Pad_Fusion"). `allow_spinning=False`: idle worker threads sleep instead of spinning, which matters
    when several sessions take turns on few cores (benchmarks).
    Device "tensorrt" only: `tensorrt_fp16` lets TensorRT use float16 kernels (None: when the model's metadata says
    it is a float16 model); `tensorrt_cache` is where engines are kept (None: `tensorrt_cache/` beside the model, no
    cache for model bytes). `cuda_graph` (device "cuda" only): capture CUDA graphs; run the session through
    `CudaGraphs`.
    """
    import onnxruntime as ort

    check_device_name(device)
    if graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise ExportError(f"unknown graph optimisation level {graph_optimization!r}: use {', '.join(GRAPH_OPTIMIZATIONS)}")
    if cudnn_conv_algo_search not in CONV_ALGO_SEARCHES:
        raise ExportError(f"unknown cudnn_conv_algo_search {cudnn_conv_algo_search!r}: use {', '.join(CONV_ALGO_SEARCHES)}")
    if threads < 0:
        raise ExportError(f"threads must be ≥ 0 (0: ONNX Runtime's default), not {threads}")
    if device != "tensorrt" and (tensorrt_fp16 or tensorrt_cache is not None):
        raise ExportError(f"TensorRT options (float16, engine cache) need device tensorrt, not {device}")
    if cuda_graph and device != "cuda":
        raise ExportError(f"CUDA graphs need device cuda, not {device} (zoo replays them on the CUDA execution "
                          f"provider only)")

    fallback = None
    settings: list[str] = []
    # use_tf32 "0": float32 convolutions and matmuls in float32, not TensorFloat-32 (ORT's default on Ampere and
    # later rounds their inputs to 10 mantissa bits, ~1e-3 relative: parity's 1e-5 rule could not hold)
    cuda_options = {"cudnn_conv_algo_search": cudnn_conv_algo_search, "use_tf32": "0"}
    if cuda_graph:
        cuda_options["enable_cuda_graph"] = "1"
        settings.append("CUDA graphs")
    providers: list[Any] = [CPU]
    if device == "tensorrt":
        if reason := tensorrt_unavailable_reason():
            raise ExportError(f"TensorRT execution provider is not usable here: {reason}")
        fp16 = _is_float16_model(path) if tensorrt_fp16 is None else tensorrt_fp16
        trt_options = {"trt_fp16_enable": str(bool(fp16))}
        cache = _tensorrt_cache_dir(path, tensorrt_cache)
        if cache is not None:
            trt_options |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}
        settings += [f"TensorRT {'float16 allowed' if fp16 else 'float32'}",
                     f"engine cache {cache}" if cache is not None else "no engine cache"]
        providers = [(TENSORRT, trt_options), (CUDA, cuda_options)]
    elif device != "cpu":
        reason = cuda_unavailable_reason()
        if reason is None:
            providers = [(CUDA, cuda_options)] if device == "cuda" else [(CUDA, cuda_options), CPU]
        elif device == "cuda":
            raise ExportError(f"CUDA execution provider is not usable here: {reason}")
        else:
            fallback = f"CUDA not usable, running on CPU: {reason}"

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
    if device in GPU_DEVICES:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if optimized_model_path is not None:  # export/localize.py reads which tensors ORT's optimisations keep
        options.optimized_model_filepath = str(optimized_model_path)
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    model = path if isinstance(path, bytes) else str(path)
    where = "the model" if isinstance(path, bytes) else path
    on = {"cuda": "CUDA alone", "tensorrt": "TensorRT and CUDA"}.get(device)
    log = _captured_process_output() if cuda_graph else contextlib.nullcontext(None)
    try:
        with log as captured:
            session = ort.InferenceSession(model, options, providers=providers, **extra)
    except Exception as e:
        if on:
            raise ExportError(f"ONNX Runtime cannot run {where} on {on}: {first_line(e)}") from e
        raise ExportError(f"ONNX Runtime cannot load {where}: {first_line(e)}") from e
    if captured is not None:
        _check_graph_capture(captured.getvalue(), where)
    in_use = session.get_providers()
    if device == "cuda" and in_use[0] != CUDA:
        raise ExportError(f"CUDA execution provider is not usable here: the session runs on {in_use[0]}")
    if device == "tensorrt" and in_use[0] != TENSORRT:
        raise ExportError(f"TensorRT execution provider is not usable here: the session runs on {in_use[0]}")
    return OrtSession(session, in_use, fallback, tuple(settings))


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


class CudaGraphs:
    """Runs a session made with `cuda_graph=True` (device cuda): one CUDA graph per input shape.

    A CUDA graph replays recorded kernel launches on fixed device buffers, so each input shape gets its own: input
    and output buffers allocated on the device once (IO binding) and ORT's graph annotation `gpu_graph_id`. The first
    call of a shape makes one plain run (never captured, `gpu_graph_id` -1) to learn the output shapes, then one
    regular run on the bound buffers (ORT captures on the run after it); every later call copies the inputs into
    the buffers in place, replays the graph and copies the outputs out. `max_graphs` bounds how many shapes (each
    holding its buffers and graph on the GPU) one session keeps: a server's batch sizes run from 1 to --max-batch.
    `device` is where the buffers live ("cpu" runs the same bookkeeping without graphs, for tests)."""

    def __init__(self, session: Any, *, device: str = "cuda", max_graphs: int = 256) -> None:
        self.session = session
        self.device = device
        self.max_graphs = max_graphs
        self.output_names = [output.name for output in session.get_outputs()]
        self._graphs: dict[tuple, tuple[dict[str, Any], list[Any], Any, Any]] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        key = tuple((name, value.shape, value.dtype.str) for name, value in sorted(feeds.items()))
        if key not in self._graphs:
            self._graphs[key] = self._prepare(feeds)
        inputs, outputs, binding, run_options = self._graphs[key]
        for name, value in feeds.items():
            inputs[name].update_inplace(value)
        self.session.run_with_iobinding(binding, run_options)
        return [output.numpy().copy() if self.device == "cpu" else output.numpy() for output in outputs]

    def _prepare(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, Any], list[Any], Any, Any]:
        import onnxruntime as ort

        if len(self._graphs) >= self.max_graphs:
            shapes = ", ".join(f"{name} {'×'.join(map(str, value.shape))}" for name, value in feeds.items())
            raise ExportError(f"CUDA graphs: a new input shape ({shapes}) after {self.max_graphs} others; each shape "
                              f"keeps its own graph and buffers on the GPU")
        skip = ort.RunOptions()
        skip.add_run_config_entry("gpu_graph_id", "-1")
        plain = self.session.run(self.output_names, feeds, skip)
        # copies: on the CPU an OrtValue wraps the array it is given, and update_inplace would write into the caller's
        inputs = {name: ort.OrtValue.ortvalue_from_numpy(value.copy(), self.device, 0) for name, value in feeds.items()}
        outputs = [ort.OrtValue.ortvalue_from_shape_and_type(value.shape, value.dtype, self.device, 0)
                   for value in plain]
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self.output_names, outputs):
            binding.bind_ortvalue_output(name, value)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(len(self._graphs) + 1))
        self.session.run_with_iobinding(binding, run_options)  # the regular run ORT makes before it captures
        return inputs, outputs, binding, run_options


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
            session = ort.InferenceSession(probe_model(), options, providers=[CUDA])
            session.run(None, {"x": np.ones((1,), np.float32)})
            return None
        except Exception as e:
            error = first_line(e)
    return _load_failure(captured.getvalue()) or error


def tensorrt_available() -> bool:
    """True when ONNX Runtime can really create and run a session on the TensorRT execution provider."""
    return tensorrt_unavailable_reason() is None


@functools.cache
def tensorrt_unavailable_reason() -> str | None:
    """Why ONNX Runtime cannot run on TensorRT here (None when it can): the CUDA probe first (TensorRT runs on
    CUDA), then the same one-node model on TensorRT alone with CPU fallback disabled, the TensorRT libraries of the
    `tensorrt` pip packages loaded first. Cached."""
    import onnxruntime as ort

    if TENSORRT not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no TensorRT execution provider (install onnxruntime-gpu)"
    if reason := cuda_unavailable_reason():
        return f"CUDA is not usable, and TensorRT runs on CUDA: {reason}"
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with _captured_process_output() as captured:
        preload_tensorrt()
        try:
            session = ort.InferenceSession(probe_model(), options, providers=[TENSORRT])
            if session.get_providers()[0] != TENSORRT:
                raise RuntimeError(f"the session runs on {session.get_providers()[0]}")
            session.run(None, {"x": np.ones((1,), np.float32)})
            return None
        except Exception as e:
            error = first_line(e)
    return _load_failure(captured.getvalue()) or error


def tensorrt_library_dirs() -> list[Path]:
    """The `tensorrt_libs` folders of the `tensorrt` pip packages on sys.path (where its wheels put libnvinfer)."""
    dirs = []
    for entry in sys.path:
        folder = Path(entry or ".") / "tensorrt_libs"
        if folder.is_dir() and folder.resolve() not in dirs:
            dirs.append(folder.resolve())
    return dirs


def preload_tensorrt() -> list[str]:
    """Load the TensorRT libraries from the `tensorrt` pip packages (not on the loader path), so that ORT's
    TensorRT provider finds them by name, as `preload_dlls` does for CUDA. Returns the files loaded."""
    import ctypes

    loaded = []
    for folder in tensorrt_library_dirs():
        for stem in TENSORRT_LIBRARIES:
            for library in sorted(folder.glob(stem + ".*")):
                if library.name.count(".") != 2:  # libnvinfer.so.10: the name the provider asks for
                    continue
                with contextlib.suppress(OSError):
                    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
                    loaded.append(str(library))
    return loaded


def _is_float16_model(path: Path | str | bytes) -> bool:
    """Whether export/fp16.py wrote this model (its metadata says precision float16); weights are not read."""
    import onnx

    from export.fp16 import PRECISION_KEY

    try:
        model = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - the session's own load reports an unreadable model
        return False
    return any(prop.key == PRECISION_KEY and prop.value == "float16" for prop in model.metadata_props)


def _tensorrt_cache_dir(path: Path | str | bytes, requested: Path | str | None) -> Path | None:
    """Where TensorRT keeps this model's engines: `requested`, else `tensorrt_cache/` beside the model (else, when
    that folder cannot be made, zoo's folder in the user's cache). None for model bytes without `requested`. A
    folder made here gets a zoo manifest, so the export folder holding it still counts as zoo's."""
    from export.atomic import read_manifest, write_manifest

    if requested is None and isinstance(path, bytes):
        return None
    folder = Path(requested).expanduser() if requested is not None else Path(path).parent / TENSORRT_CACHE
    try:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        if created or (not any(folder.iterdir()) and read_manifest(folder) is None):
            write_manifest(folder, {"kind": TENSORRT_CACHE_KIND, "entries": {}})
        return folder
    except OSError as e:
        if requested is not None:
            raise ExportError(f"cannot use {folder} for TensorRT engines: {e.strerror or e}") from None
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoo" / TENSORRT_CACHE
    home.mkdir(parents=True, exist_ok=True)
    return home


def _check_graph_capture(log: str, where: Any) -> None:
    """ORT only logs a warning when it cannot capture CUDA graphs for a model, then runs without them."""
    for line in log.splitlines():
        if "cannot use the graph capture feature" in line:
            reason = line[line.index("This session"):] if "This session" in line else line.strip()
            raise ExportError(f"CUDA graphs are not possible for {where}: {reason}")
    if log:
        sys.stderr.write(log)


def probe_model() -> bytes:
    """A one-node float32 model (y = x + x, input "x" of shape [1]) that every execution provider can run: what the
    probes run."""
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
