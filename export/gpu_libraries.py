"""Where the GPU libraries ONNX Runtime loads are, and which version each is: what `zoo doctor` reports.

ONNX Runtime's CUDA and TensorRT providers are shared libraries that load CUDA, cuDNN, cuBLAS and TensorRT by name
(libcudart.so.13, libcudnn.so.9, libnvinfer.so.10, …) and the driver's libcuda.so.1. Those come from
- the nvidia-* pip wheels (`site-packages/nvidia/*/lib`; CUDA 13 puts its libraries in `nvidia/cu13/lib`), which
  `onnxruntime.preload_dlls()` loads, and the `tensorrt` wheels (`site-packages/tensorrt_libs`, loaded by
  export/ort_session.py `preload_tensorrt`);
- the system: LD_LIBRARY_PATH, then the loader's cache (`ldconfig -p`); a CUDA toolkit in /usr/local/cuda that is
  on neither is found but reported as off the loader path;
- the NVIDIA driver (libcuda.so.1, /proc/driver/nvidia/version, nvidia-smi), which pip cannot install.

Every search takes its roots as parameters (`Search`), so tests point it at a fake folder tree;
`Search.from_environment()` is this machine's. Which libraries the installed ONNX Runtime needs is read from its
provider libraries themselves (`elf_needed`: their DT_NEEDED entries), plus cuDNN and cuFFT, which the CUDA
provider opens at run time; `onnxruntime.cuda_version` says which CUDA major it was built for.
"""
from __future__ import annotations

import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROC_DRIVER = Path("/proc/driver/nvidia/version")
# folders where a CUDA / cuDNN / TensorRT install often is without being on the loader path
OFF_PATH_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/local/cuda/targets/x86_64-linux/lib",
                 "/usr/lib/wsl/lib", "/usr/local/tensorrt/lib", "/opt/tensorrt/lib")
KIND = {  # library name stem -> what it is
    "libcudart": "CUDA runtime", "libcublas": "cuBLAS", "libcublasLt": "cuBLASLt", "libcurand": "cuRAND",
    "libcufft": "cuFFT", "libcudnn": "cuDNN", "libnvrtc": "NVRTC", "libcuda": "NVIDIA driver (user space)",
    "libnvinfer": "TensorRT", "libnvinfer_plugin": "TensorRT plugins", "libnvonnxparser": "TensorRT ONNX parser",
}
DRIVER_LIBRARY = "libcuda.so.1"
MIN_DRIVER = {13: 580, 12: 525}  # CUDA major -> oldest Linux driver branch that runs it
_GPU_LIBRARY = re.compile(r"^lib(cu|nv)")  # what of a provider's DT_NEEDED is a GPU library (not libc, libstdc++…)


@dataclass(frozen=True)
class Library:
    """One library looked up by the name the loader is asked for (`name`, e.g. libcudart.so.13)."""

    name: str
    path: Path | None = None
    version: str | None = None  # the full version: from the real file's name (libcudart.so.13.0.96) or its wheel
    source: str | None = None  # "wheel nvidia-cuda-runtime 13.0.96", "LD_LIBRARY_PATH", "system", "off the loader path"

    @property
    def found(self) -> bool:
        return self.path is not None

    @property
    def loadable(self) -> bool:
        """Found where ONNX Runtime will load it from (a wheel, LD_LIBRARY_PATH or the loader's cache)."""
        return self.found and self.source != "off the loader path"

    @property
    def kind(self) -> str:
        return KIND.get(self.name.split(".so", 1)[0], "")

    def describe(self) -> str:
        if not self.found:
            return f"{self.name}: not found"
        version = f" {self.version}" if self.version else ""
        return f"{self.name}{version} ({self.source}: {self.path})"

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "found": self.found, "loadable": self.loadable,
                "path": str(self.path) if self.path else None, "version": self.version, "source": self.source}


@dataclass
class Search:
    """Where to look: wheel library folders, LD_LIBRARY_PATH, the loader's cache ({name: path}), folders that are
    off the loader path, which wheel owns which file ({resolved path: (distribution, version)}), and the driver's
    version file and nvidia-smi."""

    wheel_dirs: list[Path] = field(default_factory=list)
    ld_library_path: list[Path] = field(default_factory=list)
    ldconfig: dict[str, Path] = field(default_factory=dict)
    off_path_dirs: list[Path] = field(default_factory=list)
    owners: dict[Path, tuple[str, str]] = field(default_factory=dict)
    proc_driver: Path = PROC_DRIVER
    nvidia_smi: str | None = None

    @classmethod
    def from_environment(cls) -> Search:
        roots = site_roots()
        return cls(wheel_dirs=wheel_library_dirs(roots),
                   ld_library_path=[Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p],
                   ldconfig=ldconfig_cache(), off_path_dirs=[Path(p) for p in OFF_PATH_DIRS],
                   owners=wheel_owners(), nvidia_smi=shutil.which("nvidia-smi"))

    def find(self, name: str) -> Library:
        """`name` (e.g. libcudnn.so.9) as ONNX Runtime would find it: wheels first (preloaded), then the loader's
        order (LD_LIBRARY_PATH, its cache), then the usual install folders that are not on the loader path."""
        for folder in self.wheel_dirs:
            if (folder / name).exists():
                path = folder / name
                owner = self.owners.get(_resolved(path))
                source = f"wheel {owner[0]} {owner[1]}" if owner else "wheel"
                return Library(name, path, _file_version(path, name) or (owner[1] if owner else None), source)
        for folder in self.ld_library_path:
            if (folder / name).exists():
                return Library(name, folder / name, _file_version(folder / name, name), "LD_LIBRARY_PATH")
        if name in self.ldconfig:
            path = self.ldconfig[name]
            return Library(name, path, _file_version(path, name), "system")
        for folder in self.off_path_dirs:
            if (folder / name).exists():
                return Library(name, folder / name, _file_version(folder / name, name), "off the loader path")
        return Library(name)


def site_roots() -> list[Path]:
    """The site-packages folders on sys.path (where pip put the wheels)."""
    roots = []
    for entry in sys.path:
        path = Path(entry or ".")
        if path.name in ("site-packages", "dist-packages") and path.is_dir() and path not in roots:
            roots.append(path)
    return roots


def wheel_library_dirs(roots: list[Path]) -> list[Path]:
    """The library folders of the nvidia-* and tensorrt wheels under `roots`: nvidia/*/lib (CUDA 12: one package
    per library; CUDA 13: nvidia/cu13/lib for all of CUDA, nvidia/cudnn/lib for cuDNN) and tensorrt_libs."""
    dirs = []
    for root in roots:
        dirs += sorted(path for path in (root / "nvidia").glob("*/lib") if path.is_dir())
        if (root / "tensorrt_libs").is_dir():
            dirs.append(root / "tensorrt_libs")
    return dirs


def wheel_owners() -> dict[Path, tuple[str, str]]:
    """{resolved library path: (distribution, version)} for the shared libraries of the installed nvidia-* and
    tensorrt distributions (their package version is the library's, e.g. nvidia-cudnn-cu13 9.13.0.50)."""
    from importlib.metadata import distributions

    owners = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower()
        if not name.startswith(("nvidia-", "tensorrt")):
            continue
        for file in dist.files or ():
            if ".so" in file.name:
                owners[_resolved(Path(dist.locate_file(file)))] = (name, dist.version)
    return owners


def ldconfig_cache(output: str | None = None) -> dict[str, Path]:
    """{library name: path} from `ldconfig -p` (the loader's cache), or from `output` of it. Empty when there is
    no ldconfig (not Linux)."""
    if output is None:
        for command in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
            try:
                result = subprocess.run([command, "-p"], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.SubprocessError):
                continue
            output = result.stdout
            break
        else:
            return {}
    entries: dict[str, list[tuple[bool, Path]]] = {}
    for line in output.splitlines():
        match = re.match(r"\s+(\S+) \(([^)]*)\) => (\S+)", line)
        if match:
            entries.setdefault(match[1], []).append(("64" in match[2], Path(match[3])))
    # the first 64-bit entry (x86-64, AArch64) of each name, else its first
    return {name: next((path for is64, path in paths if is64), paths[0][1]) for name, paths in entries.items()}


def driver_version(proc_driver: Path = PROC_DRIVER, nvidia_smi: str | None = None) -> tuple[str | None, str | None]:
    """(the NVIDIA driver's version, where it was read) from /proc/driver/nvidia/version, else nvidia-smi;
    (None, None) without a driver."""
    try:
        match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", proc_driver.read_text(errors="replace"))
        if match:
            return match[1], str(proc_driver)
    except OSError:
        pass
    lines = _nvidia_smi(nvidia_smi, "driver_version")
    return (lines[0], "nvidia-smi") if lines else (None, None)


def gpus(nvidia_smi: str | None) -> list[str]:
    """'NVIDIA H200, 143771 MiB' for each GPU nvidia-smi lists (empty without nvidia-smi or a GPU)."""
    return _nvidia_smi(nvidia_smi, "name,memory.total")


def driver_too_old(version: str | None, cuda_major: int | None) -> int | None:
    """The oldest driver branch that runs CUDA `cuda_major` when `version` is older (None: new enough, or unknown)."""
    if not version or cuda_major not in MIN_DRIVER:
        return None
    branch = int(version.split(".")[0])
    return MIN_DRIVER[cuda_major] if branch < MIN_DRIVER[cuda_major] else None


def onnxruntime_needs(capi: Path | None = None, cuda_version: str | None = None) -> dict[str, list[str]]:
    """{"cuda": [...], "tensorrt": [...]}: the GPU libraries the installed ONNX Runtime's CUDA and TensorRT providers
    load (an empty list: that provider is not installed). Read from the providers' DT_NEEDED entries, plus what the
    CUDA provider opens at run time (cuDNN 9; cuFFT 11 for CUDA 12, 12 for CUDA 13)."""
    if capi is None or cuda_version is None:
        import onnxruntime as ort

        capi = capi or Path(ort.__file__).parent / "capi"
        cuda_version = cuda_version if cuda_version is not None else (getattr(ort, "cuda_version", "") or "")
    major = cuda_major(cuda_version)
    needs: dict[str, list[str]] = {}
    for provider in ("cuda", "tensorrt"):
        library = capi / f"libonnxruntime_providers_{provider}.so"
        linked = [name for name in (elf_needed(library) or []) if _GPU_LIBRARY.match(name)]
        if provider == "cuda" and library.exists() and major:
            linked += ["libcudnn.so.9", f"libcufft.so.{12 if major >= 13 else 11}"]
        needs[provider] = list(dict.fromkeys(linked))
    return needs


def cuda_major(cuda_version: str | None) -> int | None:
    """13 for "13.0" (onnxruntime.cuda_version), None when unknown."""
    head = (cuda_version or "").split(".")[0]
    return int(head) if head.isdigit() else None


def elf_needed(path: Path) -> list[str] | None:
    """The DT_NEEDED entries (libraries loaded by name) of a 64-bit ELF shared library; None when `path` is not
    one. Reads the section headers and the dynamic section only (the file is mapped, not read)."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != b"\x7fELF" or data[4] != 2:  # ELFCLASS64
                return None
            order = "<" if data[5] == 1 else ">"
            (section_offset,) = struct.unpack_from(order + "Q", data, 0x28)
            entry_size, count = struct.unpack_from(order + "HH", data, 0x3A)
            sections = [struct.unpack_from(order + "IIQQQQIIQQ", data, section_offset + i * entry_size)
                        for i in range(count)]
            for _, kind, _, _, offset, size, link, _, _, _ in sections:
                if kind != 6:  # SHT_DYNAMIC
                    continue
                strings = sections[link][4]
                needed = []
                for entry in range(offset, offset + size, 16):
                    tag, value = struct.unpack_from(order + "qQ", data, entry)
                    if tag == 0:  # DT_NULL
                        break
                    if tag == 1:  # DT_NEEDED
                        start = strings + value
                        needed.append(data[start:data.find(b"\0", start)].decode(errors="replace"))
                return needed
            return []
    except (OSError, ValueError, struct.error, IndexError):
        return None


def _file_version(path: Path, name: str) -> str | None:
    """'13.0.96' when `path` resolves to libcudart.so.13.0.96 (a system install's real file); else what the library
    itself answers (`library_version`); None when neither says more than the name asked for."""
    real = _resolved(path).name
    if real.startswith(name.split(".so", 1)[0] + ".so.") and len(real) > len(name):
        return real.split(".so.", 1)[1]
    return library_version(path)


# library stem -> (function returning its version as an integer, how to split it); none of them needs a GPU
_VERSION_CALLS = {
    "libcudart": ("cudaRuntimeGetVersion", "pointer", (1000, 10, 0)),  # 13000 -> 13.0
    "libcudnn": ("cudnnGetVersion", "size_t", (10000, 100, 1)),  # 91300 -> 9.13.0
    "libcublasLt": ("cublasLtGetVersion", "size_t", (10000, 100, 1)),  # 130100 -> 13.1.0
    "libnvinfer": ("getInferLibVersion", "int", (10000, 100, 1)),  # 101300 -> 10.13.0
}


def library_version(path: Path) -> str | None:
    """The version the library reports about itself (CUDA runtime, cuDNN, cuBLASLt, TensorRT), loaded with ctypes;
    None for other libraries, or when it cannot be loaded (a missing dependency)."""
    import ctypes

    stem = path.name.split(".so", 1)[0]
    if stem not in _VERSION_CALLS or not path.is_file():
        return None
    function, returns, (major, minor, patch) = _VERSION_CALLS[stem]
    try:
        call = getattr(ctypes.CDLL(str(path)), function)
        if returns == "pointer":
            value = ctypes.c_int(0)
            if call(ctypes.byref(value)) != 0:
                return None
            number = value.value
        else:
            call.restype = ctypes.c_size_t if returns == "size_t" else ctypes.c_int
            number = int(call())
    except (OSError, AttributeError):
        return None
    if number <= 0:
        return None
    parts = [number // major, number % major // minor] + ([number % minor] if patch else [])
    return ".".join(map(str, parts))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def _nvidia_smi(command: str | None, fields: str) -> list[str]:
    if not command:
        return []
    try:
        result = subprocess.run([command, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []
