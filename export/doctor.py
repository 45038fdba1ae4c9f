"""What runs here, and what to install for what does not: the checks behind `zoo doctor`.

`diagnose()` returns a DoctorReport: rows {check, status ok/warn/fail, detail, fix} for people, and the facts behind
them (versions, the CPU's instruction sets, TensorFlow's devices, ONNX Runtime's providers and whether each really
runs, the GPU libraries found and their versions, the NVIDIA driver) for `--json`. Every row that is not "ok" says
what to do. "fail" is kept for what stops the CPU path (TensorFlow, Keras, tf2onnx, ONNX, ONNX Runtime on the
CPU), and for what `require` ("cuda" or "tensorrt") asks for; everything else that is missing is a "warn".

The CUDA and TensorRT rows run the probes every session factory uses (export/ort_session.py
`cuda_unavailable_reason`, `tensorrt_unavailable_reason`) and explain them from the library search
(export/gpu_libraries.py): "libraries missing" (install the gpu extra) is told apart from "libraries here, no
driver or GPU" and from "driver too old".
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from export.errors import first_line
from export.gpu_libraries import (
    DRIVER_LIBRARY,
    MIN_DRIVER,
    Library,
    Search,
    cuda_major,
    driver_too_old,
    driver_version,
    gpus,
    onnxruntime_needs,
)

STATUSES = ("ok", "warn", "fail")
REQUIREMENTS = ("cuda", "tensorrt")
GPU_EXTRA = 'pip install -e ".[gpu]"'
TENSORRT_EXTRA = 'pip install -e ".[gpu,tensorrt]"'
CORE = 'pip install -e .'
PACKAGES = {  # row -> the distributions that provide it, first found wins
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"),
    "keras": ("keras",),
    "tf2onnx": ("tf2onnx",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
}


@dataclass
class Check:
    check: str
    status: str  # ok, warn or fail
    detail: str
    fix: str | None = None  # what to do, for every row that is not ok

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorReport:
    checks: list[Check]
    facts: dict[str, Any] = field(default_factory=dict)
    require: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == "fail"]

    def verdict(self) -> str | None:
        """One line saying what fails and how to fix it (None when nothing does): the first failed check, which for
        a broken CPU path is a CPU-path row (they come first)."""
        failures = self.failures()
        if not failures:
            return None
        first = failures[0]
        if first.check in CPU_PATH:
            head = "the CPU path does not work"
        else:
            head = f"{ {'cuda': 'CUDA', 'tensorrt': 'TensorRT'}.get(self.require or '', 'a requirement') } cannot run here"
        more = f" ({len(failures) - 1} more failed checks above)" if len(failures) > 1 else ""
        return f"{head}: {first.check}: {first.detail}; fix: {first.fix}{more}"

    def row(self, name: str) -> Check:
        return next(check for check in self.checks if check.check == name)

    def to_dict(self) -> dict[str, Any]:
        return {"zoo": self.facts.get("versions", {}).get("zoo"), "require": self.require, "passed": self.passed,
                **self.facts, "checks": [check.to_dict() for check in self.checks]}

    def table(self) -> str:
        width = max(len(check.check) for check in self.checks)
        lines = []
        for check in self.checks:
            lines.append(f"{check.status:<4}  {check.check:<{width}}  {check.detail}")
            if check.fix:
                lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
        lines += ["", self.summary()]
        return "\n".join(lines)

    def summary(self) -> str:
        runs = self.facts.get("onnxruntime", {}).get("runs", {})
        cpu_path = "works" if not any(check.status == "fail" and check.check in CPU_PATH for check in self.checks) \
            else "does NOT work"
        gpu = "; ".join(f"{label}: {'runs' if runs.get(provider) else 'not usable'}"
                        for label, provider in (("CUDA", "CUDAExecutionProvider"),
                                                ("TensorRT", "TensorrtExecutionProvider")))
        return f"CPU path {cpu_path}; {gpu}" + (f"; required: {self.require}" if self.require else "")


CPU_PATH = ("python", *PACKAGES, "tensorflow devices", "ort CPUExecutionProvider")


def diagnose(*, require: str | None = None, search: Search | None = None, tensorflow: bool = True) -> DoctorReport:
    """Every check, on this machine (or with the library search `search`). `require`: "cuda" or "tensorrt" makes
    their rows fail instead of warn. `tensorflow=False` skips importing TensorFlow (its devices are not listed)."""
    import onnxruntime as ort

    from export.cpu_features import cpu_features, cpu_flags, cpu_name

    if require is not None and require not in REQUIREMENTS:
        raise ValueError(f"require must be one of {REQUIREMENTS}, not {require!r}")
    search = search or Search.from_environment()
    checks: list[Check] = []
    versions = _versions()
    checks.append(Check("python", "ok", f"{platform.python_version()} ({sys.executable})"))
    checks += _package_rows(versions)

    flags = cpu_flags()
    features = cpu_features()
    cpu = {"name": cpu_name(), "machine": platform.machine(), "cores": os.cpu_count(), "flags_known": flags is not None,
           "features": features}
    checks += _cpu_rows(cpu)

    cuda_version = getattr(ort, "cuda_version", "") or ""
    major = cuda_major(cuda_version)
    needs = onnxruntime_needs(cuda_version=cuda_version) if major else {"cuda": [], "tensorrt": []}
    version, source = driver_version(search.proc_driver, search.nvidia_smi)
    driver = {"version": version, "source": source, "gpus": gpus(search.nvidia_smi),
              "minimum": MIN_DRIVER.get(major) if major else None}
    names = list(dict.fromkeys([*needs["cuda"], *needs["tensorrt"]]))
    libraries = {name: search.find(name) for name in names}

    tf_facts: dict[str, Any] = {}
    if tensorflow:
        tf_check, tf_facts = _tensorflow_row(version is not None)
        checks.append(tf_check)

    providers, ort_facts = _provider_rows(ort, libraries, needs, version, major, require)
    checks += providers
    checks += _library_rows(libraries, needs, require)
    checks.append(_driver_row(driver, major, require))
    facts = {
        "versions": versions,
        "cpu": cpu,
        "tensorflow": tf_facts,
        "onnxruntime": ort_facts | {"cuda_version": cuda_version or None, "needs": needs},
        "libraries": [library.to_dict() | {"needed_by": [p for p in ("cuda", "tensorrt") if name in needs[p]]}
                      for name, library in libraries.items()],
        "driver": driver,
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine()},
    }
    return DoctorReport(checks, facts, require)


def explain_unusable(provider: str, reason: str | None, libraries: dict[str, Library], needed: list[str],
                     driver: str | None, major: int | None) -> str:
    """What to do when ONNX Runtime's CUDA or TensorRT provider ("cuda" / "tensorrt") cannot run, from what the
    library search found: the missing libraries and the command that installs them, the libraries found off the
    loader path, a missing driver, a driver older than the CUDA major needs."""
    steps = []
    if not needed:
        return f"this onnxruntime has no {provider.upper() if provider == 'cuda' else 'TensorRT'} provider: " \
               f"{GPU_EXTRA if provider == 'cuda' else TENSORRT_EXTRA} (onnxruntime-gpu, Linux x86_64)"
    found = [libraries[name] for name in needed if name in libraries]
    missing = [library.name for library in found if not library.found and library.name != DRIVER_LIBRARY]
    off_path = [library for library in found if library.found and not library.loadable]
    if missing:
        kinds = [what for what, present in (
            (f"CUDA{f' {major}' if major else ''} / cuDNN 9", any(not name.startswith("libnv") for name in missing)),
            ("TensorRT", any(name.startswith("libnv") for name in missing))) if present]
        command = TENSORRT_EXTRA if provider == "tensorrt" else GPU_EXTRA
        steps.append(f"install the {' and '.join(kinds)} libraries: {command} (missing: {', '.join(missing)})")
    if off_path:
        folders = sorted({str(library.path.parent) for library in off_path if library.path is not None})
        steps.append(f"put {', '.join(library.name for library in off_path)} on the loader path: "
                     f"export LD_LIBRARY_PATH={os.pathsep.join(folders)}:$LD_LIBRARY_PATH")
    driver_library = libraries.get(DRIVER_LIBRARY)
    minimum = MIN_DRIVER.get(major) if major else None
    if driver is None or (driver_library is not None and not driver_library.found):
        where = "the CUDA libraries are here but" if not missing and not off_path else "also:"
        steps.append(f"{where} no NVIDIA driver or GPU (no {DRIVER_LIBRARY}"
                     f"{'' if driver else ', no /proc/driver/nvidia/version'}): run on a machine with an "
                     f"NVIDIA GPU and driver ≥ r{minimum or 580}; pip cannot install the driver")
    elif (oldest := driver_too_old(driver, major)) is not None:
        steps.append(f"driver {driver} is older than r{oldest}, which CUDA {major} needs: update the "
                     f"NVIDIA driver (or use onnxruntime-gpu ≤ 1.26, built for CUDA 12)")
    if not steps:
        steps.append(f"the libraries and the driver are there; ONNX Runtime's error is above ({reason}); "
                     f"see docs/gpu.md")
    return "; ".join(steps)


# -- rows -------------------------------------------------------------------------------------------------------

def _versions() -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version(), "zoo": _version("zoo")}
    for row, distributions in PACKAGES.items():
        found = [(name, _version(name)) for name in distributions if _version(name)]
        versions[row] = found[0][1] if found else None
        versions[f"{row}_package"] = found[0][0] if found else None
        if row == "onnxruntime":
            versions["onnxruntime_packages"] = [name for name, _ in found]
    return versions


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _package_rows(versions: dict[str, Any]) -> list[Check]:
    rows = []
    for row in PACKAGES:
        version, package = versions[row], versions[f"{row}_package"]
        if version is None:
            rows.append(Check(row, "fail", "not installed", f"{CORE} (installs zoo's dependencies)"))
            continue
        detail = f"{version}" + (f" ({package})" if package != row else "")
        rows.append(Check(row, "ok", detail))
    both = versions["onnxruntime_packages"]
    if len(both) > 1:
        rows[-1] = Check("onnxruntime", "warn", f"{', '.join(both)} are all installed: they share one onnxruntime "
                                                 f"module, and the one installed last wins",
                         f"pip uninstall -y {' '.join(both)} && {GPU_EXTRA}")
    return rows


def _cpu_rows(cpu: dict[str, Any]) -> list[Check]:
    features, name = cpu["features"], f"{cpu['name']}, {cpu['cores']} cores"
    if not cpu["flags_known"]:
        return [Check("cpu", "warn", f"{name}; instruction sets unknown (no /proc/cpuinfo or sysctl here)",
                      "nothing to install; int8 and bfloat16 speed cannot be predicted on this system")]
    arm = cpu["machine"].lower() in ("aarch64", "arm64")
    if arm:
        sets = [("NEON", features["asimd"]), ("dot product", features["asimddp"]), ("I8MM", features["i8mm"]),
                ("BF16", features["arm_bf16"]), ("SVE", features["sve"])]
    else:
        sets = [("AVX2", features["avx2"]), ("FMA", features["fma"]), ("AVX-512", features["avx512f"]),
                ("VNNI", features["vnni"]), ("BF16", features["bf16"]), ("AMX", features["amx_tile"])]
    listed = ", ".join(f"{label} {'yes' if present else 'no'}" for label, present in sets)
    rows = []
    if arm or features["avx2"]:
        rows.append(Check("cpu", "ok", f"{name}; {listed}"))
    else:
        rows.append(Check("cpu", "warn", f"{name}; {listed}",
                          "nothing to install: without AVX2, TensorFlow's and ONNX Runtime's float32 kernels run "
                          "slower (and TensorFlow's pip wheels need AVX)"))
    int8_fast = features["asimddp"] if arm else features["vnni"]
    if int8_fast:
        kind = "dot product" if arm else ("AVX-512 VNNI" if features["avx512_vnni"] else "AVX-VNNI")
        rows.append(Check("cpu int8", "ok", f"{kind}: int8 (U8S8) convolutions and matmuls run natively"))
    else:
        rows.append(Check("cpu int8", "warn", "no VNNI: ONNX Runtime's int8 U8S8 kernels can saturate here",
                          "quantize with reduce_range=True (or U8U8) on this CPU, and check int8 accuracy"))
    if features["bf16"]:
        kinds = [label for key, label in (("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX BF16"),
                                          ("arm_bf16", "BF16")) if features[key]]
        rows.append(Check("cpu bfloat16", "ok", f"{', '.join(kinds)}: bfloat16 arithmetic in hardware"))
    else:
        rows.append(Check("cpu bfloat16", "ok", "no bfloat16 instructions: bfloat16 would be emulated (zoo's "
                                                "exports are float32 and float16)"))
    return rows


def _tensorflow_row(driver_present: bool) -> tuple[Check, dict[str, Any]]:
    try:
        import tensorflow as tf

        devices = tf.config.list_physical_devices()
        build = dict(tf.sysconfig.get_build_info())
    except Exception as e:  # noqa: BLE001 - a broken TensorFlow is a row, not a crash
        return Check("tensorflow devices", "fail", f"TensorFlow cannot be imported: {first_line(e)}",
                     f"{CORE} (reinstalls TensorFlow)"), {"error": first_line(e)}
    names = [device.name.replace("/physical_device:", "") for device in devices]
    gpu_names = [name for name in names if name.startswith("GPU")]
    facts = {"version": tf.__version__, "devices": names, "gpus": gpu_names,
             "cuda_build": bool(build.get("is_cuda_build")), "cuda_version": build.get("cuda_version"),
             "cudnn_version": build.get("cudnn_version")}
    built = (f"built for CUDA {build['cuda_version']} / cuDNN {build.get('cudnn_version')}"
             if build.get("is_cuda_build") else "a CPU build")
    if gpu_names:
        return Check("tensorflow devices", "ok", f"{', '.join(names)} ({built})"), facts
    if driver_present:
        return Check("tensorflow devices", "warn", f"{', '.join(names)}: TensorFlow sees no GPU, so training and "
                                                   f"the Keras parity reference run on the CPU ({built})",
                     "nothing, to serve (serving needs only ONNX Runtime); to train on the GPU, a separate venv with "
                     "pip install \"tensorflow[and-cuda]\" (CUDA 12 wheels; docs/gpu.md says why not this one)"), facts
    return Check("tensorflow devices", "ok", f"{', '.join(names)}; no GPU here ({built})"), facts


def _provider_rows(ort: Any, libraries: dict[str, Library], needs: dict[str, list[str]], driver: str | None,
                   major: int | None, require: str | None) -> tuple[list[Check], dict[str, Any]]:
    from export.ort_session import (
        CPU,
        CUDA,
        TENSORRT,
        cuda_unavailable_reason,
        make_session,
        probe_model,
        tensorrt_unavailable_reason,
    )

    available = list(ort.get_available_providers())
    package = next((name for name in PACKAGES["onnxruntime"] if _version(name)), "onnxruntime")
    rows = [Check("ort providers", "ok", f"onnxruntime {ort.__version__} ({package}"
                                         f"{f', CUDA {ort.cuda_version} build' if getattr(ort, 'cuda_version', '') else ''}"
                                         f"): {', '.join(available)}")]
    runs: dict[str, bool] = {}
    reasons: dict[str, str | None] = {}
    try:
        session = make_session(probe_model(), device="cpu").session
        session.run(None, {"x": np.ones((1,), np.float32)})
        runs[CPU], reasons[CPU] = True, None
        rows.append(Check("ort CPUExecutionProvider", "ok", "runs (one-node probe)"))
    except Exception as e:  # noqa: BLE001
        runs[CPU], reasons[CPU] = False, first_line(e)
        rows.append(Check("ort CPUExecutionProvider", "fail", f"does not run: {first_line(e)}",
                          f"pip uninstall -y onnxruntime onnxruntime-gpu && {CORE}"))
    for provider, label, probe, key in ((CUDA, "ort CUDAExecutionProvider", cuda_unavailable_reason, "cuda"),
                                        (TENSORRT, "ort TensorrtExecutionProvider", tensorrt_unavailable_reason,
                                         "tensorrt")):
        reason = probe()
        runs[provider], reasons[provider] = reason is None, reason
        if reason is None:
            rows.append(Check(label, "ok", "runs (one-node probe, CPU fallback disabled)"))
            continue
        required = require == key or (require == "tensorrt" and key == "cuda")
        fix = explain_unusable(key, reason, libraries, needs[key], driver, major)
        rows.append(Check(label, "fail" if required else "warn", f"not usable: {reason}", fix))
    for provider in available:
        if provider not in (CPU, CUDA, TENSORRT):
            runs[provider], reasons[provider] = False, "not used by zoo"
            rows.append(Check(f"ort {provider}", "ok", "available; zoo does not use it"))
    return rows, {"version": ort.__version__, "package": package, "available": available, "runs": runs,
                  "reasons": reasons}


def _library_rows(libraries: dict[str, Library], needs: dict[str, list[str]], require: str | None) -> list[Check]:
    rows = []
    for name, library in libraries.items():
        users = [provider for provider in ("cuda", "tensorrt") if name in needs[provider]]
        label = f"lib {name}"
        what = f"{library.kind}, for {' and '.join('CUDA' if u == 'cuda' else 'TensorRT' for u in users)}"
        required = require is not None and (require in users or (require == "tensorrt" and "cuda" in users))
        bad = "fail" if required else "warn"
        if library.loadable:
            version = f"{library.version} " if library.version else ""
            rows.append(Check(label, "ok", f"{version}{library.source}: {library.path} ({what})"))
        elif library.found:
            rows.append(Check(label, bad, f"found off the loader path: {library.path} ({what})",
                              f"export LD_LIBRARY_PATH={library.path.parent}:$LD_LIBRARY_PATH"))
        elif name == DRIVER_LIBRARY:
            rows.append(Check(label, bad, "not found (the NVIDIA driver's user-space library, for CUDA)",
                              "install the NVIDIA driver (≥ r580 for CUDA 13) on a machine with an NVIDIA GPU; pip "
                              "cannot install it"))
        else:
            command = TENSORRT_EXTRA if users == ["tensorrt"] else GPU_EXTRA
            rows.append(Check(label, bad, f"not found ({what})", f"{command} (nvidia-* / tensorrt wheels)"))
    return rows


def _driver_row(driver: dict[str, Any], major: int | None, require: str | None) -> Check:
    version, minimum = driver["version"], driver["minimum"]
    bad = "fail" if require else "warn"
    if version is None:
        return Check("nvidia driver", bad, "none (no /proc/driver/nvidia/version, no nvidia-smi): no NVIDIA GPU in "
                                          "use here",
                     f"a GPU machine needs the NVIDIA driver ≥ r{minimum or 580}; pip cannot install it")
    listed = f"; {', '.join(driver['gpus'])}" if driver["gpus"] else ""
    if (oldest := driver_too_old(version, major)) is not None:
        return Check("nvidia driver", bad, f"{version} (from {driver['source']}){listed}: older than r{oldest}, "
                                           f"which CUDA {major} needs",
                     f"update the NVIDIA driver to r{oldest} or later")
    return Check("nvidia driver", "ok", f"{version} (from {driver['source']}){listed}")
