"""The CPU's instruction sets that decide how fast int8 and bfloat16 run, read from the kernel's flags.

    from export.cpu_features import cpu_features
    features = cpu_features()          # {"avx2": True, "avx512f": True, "avx512_vnni": True, "vnni": True, ...}
    if not features["vnni"]: ...       # int8 U8S8 may saturate: quantize with reduce_range=True or U8U8

Every key of FEATURES is always present, True or False. On Linux the flags come from /proc/cpuinfo (x86 `flags`,
ARM `Features`); on macOS from `sysctl`; elsewhere nothing is known and every feature reads False — `cpu_flags()`
returns None in that case, so a caller can tell "unknown" from "absent".

What they mean for zoo's runtimes:
- avx2 / fma: ONNX Runtime's and TensorFlow's fast float32 kernels (TensorFlow's pip wheels need AVX).
- avx512f: wider float32 kernels.
- vnni (avx512_vnni or avx_vnni): int8 dot products in one instruction; ONNX Runtime's U8S8 int8 kernels rely on it
  (without it U8S8 can saturate: quantize with `reduce_range=True` or U8U8).
- bf16 (avx512_bf16 or amx_bf16, ARM bf16): bfloat16 arithmetic in hardware; without it bfloat16 is emulated.
- amx_tile / amx_int8 / amx_bf16: Intel AMX tile units (Sapphire Rapids and later).
- ARM: asimd (NEON), asimddp (int8 dot product, the ARM counterpart of VNNI), i8mm, sve.
"""
from __future__ import annotations

import functools
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# key -> the kernel flag names that mean it (x86 names as in /proc/cpuinfo; macOS sysctl names lower-cased)
_FLAGS: dict[str, tuple[str, ...]] = {
    "sse4_2": ("sse4_2", "sse4.2"),
    "avx": ("avx", "avx1.0"),
    "avx2": ("avx2",),
    "fma": ("fma",),
    "f16c": ("f16c",),
    "avx512f": ("avx512f",),
    "avx512bw": ("avx512bw",),
    "avx512vl": ("avx512vl",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni", "avxvnni"),
    "avx512_bf16": ("avx512_bf16", "avx512bf16"),
    "avx512_fp16": ("avx512_fp16", "avx512fp16"),
    "amx_tile": ("amx_tile",),
    "amx_int8": ("amx_int8",),
    "amx_bf16": ("amx_bf16",),
    "asimd": ("asimd", "neon"),
    "asimddp": ("asimddp",),
    "i8mm": ("i8mm",),
    "sve": ("sve",),
    "arm_bf16": ("bf16",),
}
# derived keys: any of these keys
_ANY: dict[str, tuple[str, ...]] = {
    "vnni": ("avx512_vnni", "avx_vnni"),
    "bf16": ("avx512_bf16", "amx_bf16", "arm_bf16"),
}
FEATURES: tuple[str, ...] = (*_FLAGS, *_ANY)


def cpu_features(flags: Iterable[str] | None = None) -> dict[str, bool]:
    """{feature: present} for every key of FEATURES, from `flags` (the kernel's flag names; default: this
    machine's, `cpu_flags()`). Unknown flags (a non-Linux machine without sysctl) read as all False."""
    present = {flag.lower() for flag in ((cpu_flags() or ()) if flags is None else flags)}
    features = {key: any(name in present for name in names) for key, names in _FLAGS.items()}
    features.update({key: any(features[part] for part in parts) for key, parts in _ANY.items()})
    return features


@functools.cache
def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags as the kernel names them (None when they cannot be read here)."""
    flags = _cpuinfo_flags(cpuinfo)
    if flags is None and platform.system() == "Darwin":
        flags = _sysctl_flags()
    return flags


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name ("AMD EPYC 9454", "Apple M2"), or the platform's processor string."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return name
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpuinfo_flags(cpuinfo: Path) -> frozenset[str] | None:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM; the first processor speaks for all
            return frozenset(value.split())
    return None


def _sysctl_flags() -> frozenset[str] | None:
    text = " ".join(filter(None, (_sysctl(key) for key in (
        "machdep.cpu.features", "machdep.cpu.leaf7_features", "machdep.cpu.extfeatures"))))
    flags = {flag.lower() for flag in text.split()}
    arm = {"hw.optional.neon": "asimd", "hw.optional.arm.FEAT_DotProd": "asimddp",
           "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_BF16": "bf16"}
    flags |= {flag for key, flag in arm.items() if _sysctl(key) == "1"}
    return frozenset(flags) or None


def _sysctl(key: str) -> str | None:
    try:
        result = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
