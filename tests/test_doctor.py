"""`zoo doctor` and the checks behind it (export/doctor.py, export/gpu_libraries.py): the JSON's keys, the CPU rows,
and the explanation of a CUDA that cannot run, told apart on fake library trees ("libraries missing", "libraries
here but no driver", "driver too old", "off the loader path") without the 2.5 GB of CUDA wheels."""
import json
import os
import sys
from pathlib import Path

import pytest

from export.cpu_features import FEATURES, cpu_features
from export.doctor import (
    CPU_PATH,
    GPU_EXTRA,
    STATUSES,
    TENSORRT_EXTRA,
    diagnose,
    explain_unusable,
)
from export.gpu_libraries import (
    Search,
    driver_too_old,
    driver_version,
    elf_needed,
    ldconfig_cache,
    onnxruntime_needs,
    wheel_library_dirs,
)
from export.ort_session import cuda_available, cuda_unavailable_reason
from tests.helpers import assert_user_error, invoke

CUDA13 = ["libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudart.so.13", "libcuda.so.1",
          "libcudnn.so.9", "libcufft.so.12"]
TENSORRT10 = ["libcublas.so.13", "libnvinfer.so.10", "libnvonnxparser.so.10", "libcudart.so.13", "libcudnn.so.9"]
PROC_580 = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16)\n"
PROC_550 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"


@pytest.fixture(scope="module")
def doctor_json(tmp_path_factory):
    """One `zoo doctor --json` run on this machine: (exit code, output, the JSON)."""
    path = tmp_path_factory.mktemp("doctor") / "doctor.json"
    result = invoke("doctor", "--json", path)
    return result.exit_code, result.output, json.loads(path.read_text())


def wheel_tree(root: Path, names: list[str]) -> Path:
    """A fake site-packages with the CUDA 13 wheel layout: nvidia/cu13/lib, nvidia/cudnn/lib, tensorrt_libs."""
    for name in names:
        folder = "cudnn" if name.startswith("libcudnn") else "cu13"
        target = root / ("tensorrt_libs" if name.startswith("libnv") else f"nvidia/{folder}/lib") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not really a library")
    return root


def search_in(tmp_path, wheels: list[str], *, proc: str | None = None, ld: list[str] = (), off: list[str] = ()):
    """A Search that sees only the fake tree under tmp_path (nothing of this machine's)."""
    root = wheel_tree(tmp_path / "site-packages", wheels)
    proc_file = tmp_path / "proc_version"
    if proc is not None:
        proc_file.write_text(proc)
    ld_dir, off_dir = tmp_path / "ld", tmp_path / "usr_local_cuda_lib64"
    for folder, names in ((ld_dir, ld), (off_dir, off)):
        folder.mkdir(exist_ok=True)
        for name in names:
            (folder / name).write_bytes(b"")
    return Search(wheel_dirs=wheel_library_dirs([root]), ld_library_path=[ld_dir], ldconfig={},
                  off_path_dirs=[off_dir], owners={}, proc_driver=proc_file, nvidia_smi=None)


def explain(search: Search, provider: str = "cuda", needed: list[str] = CUDA13) -> str:
    libraries = {name: search.find(name) for name in needed}
    version, _ = driver_version(search.proc_driver, search.nvidia_smi)
    return explain_unusable(provider, "libcublasLt.so.13: cannot open shared object file", libraries, needed,
                            version, 13)


# -- the command on this machine ---------------------------------------------------------------------------------

def test_json_keys_and_cpu_rows(doctor_json):
    code, output, data = doctor_json
    assert code == 0, output  # the CPU path works here
    assert set(data) >= {"zoo", "require", "passed", "versions", "cpu", "tensorflow", "onnxruntime", "libraries",
                         "driver", "checks"}
    assert data["passed"] is True and data["require"] is None
    assert set(data["versions"]) >= {"python", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"}
    assert set(data["cpu"]["features"]) == set(FEATURES) and data["cpu"]["features"] == cpu_features()
    assert "CPU:0" in data["tensorflow"]["devices"]
    assert data["onnxruntime"]["runs"]["CPUExecutionProvider"] is True
    assert set(data["onnxruntime"]["available"]) <= set(data["onnxruntime"]["runs"])
    rows = {row["check"]: row for row in data["checks"]}
    assert set(CPU_PATH) | {"cpu", "cpu int8", "cpu bfloat16", "nvidia driver"} <= set(rows)
    assert all(row["status"] in STATUSES and row["detail"] for row in data["checks"])
    assert all(row["fix"] for row in data["checks"] if row["status"] != "ok")  # every problem says what to do
    features = data["cpu"]["features"]
    if data["cpu"]["flags_known"] and data["cpu"]["machine"] in ("x86_64", "AMD64"):
        assert f"AVX2 {'yes' if features['avx2'] else 'no'}" in rows["cpu"]["detail"]
        assert f"VNNI {'yes' if features['vnni'] else 'no'}" in rows["cpu"]["detail"]
        assert rows["cpu int8"]["status"] == ("ok" if features["vnni"] else "warn")
    for line in (f"{row['status']:<4}  {row['check']}" for row in data["checks"]):
        assert line in output
    assert "CPU path works" in output and "wrote" in output


def test_missing_cuda_is_explained(doctor_json):
    _, output, data = doctor_json
    row = next(row for row in data["checks"] if row["check"] == "ort CUDAExecutionProvider")
    if cuda_available():
        assert row["status"] == "ok" and data["onnxruntime"]["runs"]["CUDAExecutionProvider"]
        return
    assert row["status"] == "warn" and row["detail"] == f"not usable: {cuda_unavailable_reason()}"
    assert "pip install" in row["fix"] or "driver" in row["fix"]
    assert f"fix: {row['fix']}" in output


def test_require_cuda_is_one_error_line_when_cuda_cannot_run(tmp_path):
    result = invoke("doctor", "--require", "cuda")
    if cuda_available():
        assert result.exit_code == 0, result.output
        return
    assert_user_error(result, "error: CUDA cannot run here: ort CUDAExecutionProvider: not usable: "
                              f"{cuda_unavailable_reason()}; fix: ")
    assert "CPU path works" in result.output  # the report is printed before the verdict


def test_json_is_never_written_over_a_file_zoo_did_not_write(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("my notes")
    assert_user_error(invoke("doctor", "--json", mine), "--json", "already exists", "--overwrite")
    assert mine.read_text() == "my notes"
    assert invoke("doctor", "--require", "gpu").exit_code == 2  # not a requirement: typer's usage error
    result = invoke("doctor", "--json", mine, "--overwrite")
    assert result.exit_code in (0, 1) and json.loads(mine.read_text())["checks"]


# -- the explanation, on fake library trees ------------------------------------------------------------------

def test_libraries_missing(tmp_path):
    text = explain(search_in(tmp_path, []))
    assert f"install the CUDA 13 / cuDNN 9 libraries: {GPU_EXTRA} (missing: libcublasLt.so.13" in text
    assert "libcuda.so.1" not in text.split("(missing:")[1].split(")")[0]  # the driver is not a pip library
    assert "no NVIDIA driver or GPU" in text


def test_libraries_present_but_no_driver(tmp_path):
    search = search_in(tmp_path, [n for n in CUDA13 if n != "libcuda.so.1"])
    libraries = {name: search.find(name) for name in CUDA13}
    assert all(lib.loadable for name, lib in libraries.items() if name != "libcuda.so.1")
    assert libraries["libcudnn.so.9"].path.parent.name == "lib" and libraries["libcudnn.so.9"].source == "wheel"
    text = explain(search)
    assert text.startswith("the CUDA libraries are here but no NVIDIA driver or GPU (no libcuda.so.1")
    assert "pip install" not in text.split("pip cannot")[0] and "≥ r580" in text


def test_driver_too_old(tmp_path):
    search = search_in(tmp_path, [n for n in CUDA13 if n != "libcuda.so.1"], proc=PROC_550, ld=["libcuda.so.1"])
    assert driver_version(search.proc_driver) == ("550.54.14", str(search.proc_driver))
    assert search.find("libcuda.so.1").source == "LD_LIBRARY_PATH"
    assert explain(search).startswith("driver 550.54.14 is older than r580, which CUDA 13 needs")
    assert driver_too_old("580.65.06", 13) is None and driver_too_old("550.1", 12) is None


def test_everything_present(tmp_path):
    search = search_in(tmp_path, [n for n in CUDA13 if n != "libcuda.so.1"], proc=PROC_580, ld=["libcuda.so.1"])
    assert driver_version(search.proc_driver)[0] == "580.65.06"
    assert explain(search).startswith("the libraries and the driver are there; ONNX Runtime's error is above")


def test_libraries_off_the_loader_path(tmp_path):
    search = search_in(tmp_path, [], off=["libcublasLt.so.13", "libcublas.so.13"])
    library = search.find("libcublas.so.13")
    assert library.found and not library.loadable and library.source == "off the loader path"
    text = explain(search)
    assert f"export LD_LIBRARY_PATH={tmp_path / 'usr_local_cuda_lib64'}:$LD_LIBRARY_PATH" in text
    assert "libcublas.so.13" not in text.split("(missing:")[1].split(")")[0]


def test_tensorrt_missing(tmp_path):
    search = search_in(tmp_path, [n for n in CUDA13 if n != "libcuda.so.1"], proc=PROC_580, ld=["libcuda.so.1"])
    text = explain(search, "tensorrt", TENSORRT10)
    assert text == (f"install the TensorRT libraries: {TENSORRT_EXTRA} (missing: libnvinfer.so.10, "
                    f"libnvonnxparser.so.10)")
    assert explain_unusable("cuda", "no provider", {}, [], None, None).startswith("this onnxruntime has no CUDA")


def test_versions_from_file_names_and_wheels(tmp_path):
    real = tmp_path / "ld" / "libcudart.so.13.0.96"
    real.parent.mkdir()
    real.write_bytes(b"")
    (tmp_path / "ld" / "libcudart.so.13").symlink_to(real.name)
    root = wheel_tree(tmp_path / "site", ["libcudnn.so.9"])
    cudnn = root / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9"
    search = Search(wheel_dirs=wheel_library_dirs([root]), ld_library_path=[tmp_path / "ld"],
                    owners={cudnn.resolve(): ("nvidia-cudnn-cu13", "9.13.0.50")})
    cudart = search.find("libcudart.so.13")
    assert (cudart.version, cudart.source) == ("13.0.96", "LD_LIBRARY_PATH")
    found = search.find("libcudnn.so.9")
    assert (found.version, found.source) == ("9.13.0.50", "wheel nvidia-cudnn-cu13 9.13.0.50")
    assert found.to_dict()["kind"] == "cuDNN" and not search.find("libcufft.so.12").found


def test_ldconfig_and_nvidia_smi_parsing(tmp_path):
    output = ("536 libs found in cache `/etc/ld.so.cache'\n"
              "\tlibcudart.so.13 (libc6) => /usr/lib32/libcudart.so.13\n"
              "\tlibcudart.so.13 (libc6,x86-64) => /usr/local/cuda-13.0/lib/libcudart.so.13\n"
              "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n")
    assert ldconfig_cache(output) == {"libcudart.so.13": Path("/usr/local/cuda-13.0/lib/libcudart.so.13"),
                                      "libcuda.so.1": Path("/usr/lib/x86_64-linux-gnu/libcuda.so.1")}
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 580.65.06\n")
    smi.chmod(0o755)
    assert driver_version(tmp_path / "no_proc", str(smi)) == ("580.65.06", "nvidia-smi")
    assert driver_version(tmp_path / "no_proc", None) == (None, None)


def test_what_onnxruntime_needs_is_read_from_its_provider_libraries(tmp_path):
    import onnxruntime as ort

    assert onnxruntime_needs(tmp_path, "13.0") == {"cuda": [], "tensorrt": []}  # a build without GPU providers
    capi = Path(ort.__file__).parent / "capi"
    if not (capi / "libonnxruntime_providers_cuda.so").exists():
        pytest.skip("this onnxruntime has no CUDA provider library")
    major = ort.cuda_version.split(".")[0]
    needs = onnxruntime_needs(capi, ort.cuda_version)
    assert f"libcudart.so.{major}" in needs["cuda"] and "libcudnn.so.9" in needs["cuda"]
    assert "libcuda.so.1" in needs["cuda"] and not any(n.startswith(("libc.so", "libstdc++")) for n in needs["cuda"])
    if needs["tensorrt"]:
        assert any(name.startswith("libnvinfer.so.") for name in needs["tensorrt"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF files")
def test_elf_needed(tmp_path):
    import onnxruntime

    pybind = next((Path(onnxruntime.__file__).parent / "capi").glob("onnxruntime_pybind11_state*.so"))
    assert any(name.startswith(("libc.so", "libstdc++")) for name in elf_needed(pybind))
    (tmp_path / "text.so").write_text("not an ELF file")
    assert elf_needed(tmp_path / "text.so") is None and elf_needed(tmp_path / "missing.so") is None


def test_required_rows_fail_and_the_rest_warn(tmp_path):
    """With `require`, what it needs fails; without, nothing GPU-related fails (the CPU path decides the exit)."""
    search = search_in(tmp_path, [n for n in CUDA13 if n != "libcuda.so.1"])
    relaxed = diagnose(search=search, tensorflow=False)
    assert relaxed.passed and not relaxed.failures()
    strict = diagnose(search=search, require="cuda", tensorflow=False)
    if cuda_available():
        pytest.skip("CUDA runs here: the fake tree's missing driver would contradict it")
    failed = {check.check for check in strict.failures()}
    assert {"ort CUDAExecutionProvider", "lib libcuda.so.1", "nvidia driver"} <= failed
    assert not any(name.startswith("lib libcudnn") or "Tensorrt" in name for name in failed)
    assert strict.row("ort CUDAExecutionProvider").fix.startswith("the CUDA libraries are here but no NVIDIA driver")
    assert strict.verdict().startswith("CUDA cannot run here: ort CUDAExecutionProvider: not usable: ")
    assert os.linesep not in strict.verdict()


def test_a_broken_cpu_path_fails_first():
    from export.doctor import Check, DoctorReport, _package_rows, _versions

    versions = _versions() | {"tensorflow": None, "tensorflow_package": None}
    rows = _package_rows(versions)
    broken = next(row for row in rows if row.check == "tensorflow")
    assert (broken.status, broken.detail, broken.fix) == ("fail", "not installed",
                                                          "pip install -e . (installs zoo's dependencies)")
    report = DoctorReport([*rows, Check("ort CUDAExecutionProvider", "fail", "not usable: x", "y")], require="cuda")
    assert report.verdict() == ("the CPU path does not work: tensorflow: not installed; fix: pip install -e . "
                                "(installs zoo's dependencies) (1 more failed checks above)")
    both = _versions() | {"onnxruntime_packages": ["onnxruntime-gpu", "onnxruntime"]}
    row = _package_rows(both)[-1]
    assert row.status == "warn" and row.fix == f"pip uninstall -y onnxruntime-gpu onnxruntime && {GPU_EXTRA}"
