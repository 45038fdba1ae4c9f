"""Never lose a user's file: every command that writes replaces only what zoo wrote before (its manifest says so),
never its own input; colliding outputs are an error; partial outputs of killed writers are cleaned up; hostile
`.keras` archives and image headers are refused in one line."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest

from export.atomic import MANIFEST, atomic_output, check_target, remove_stale_partials, write_text
from export.errors import ExportError
from tests.helpers import assert_user_error, invoke


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny conv → BN → Dense classifier saved as a `.keras` in its own folder."""
    import keras

    from tests.helpers import randomize_bn

    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    randomize_bn(model)
    path = tmp_path_factory.mktemp("model") / "net.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
    """A tiny fully convolutional gray image-to-image model (what `zoo denoise` takes)."""
    import keras

    inputs = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(1, 3, padding="same", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    path = tmp_path_factory.mktemp("denoiser") / "denoiser.keras"
    model.save(path)
    return path


def quick_export(src, *extra):
    """An export that writes only model.keras and model_folded.keras (no SavedModel, no parity): seconds."""
    return invoke("export", src, "--fold-bn", "--no-savedmodel", "--no-parity", *extra)


def listing(folder):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


# -- 1. zoo replaces only what it wrote ------------------------------------------------------------------------------

def test_export_refuses_a_file_and_a_user_folder_and_keeps_them(classifier, tmp_path):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    assert_user_error(quick_export(classifier, "--out", user_file), str(user_file),
                      "is a file, and an export is a folder", "--overwrite")
    assert user_file.read_text() == "mine"

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpeg")
    before = listing(folder)
    assert_user_error(quick_export(classifier, "--out", folder), "zoo did not write", "a.jpg", "--overwrite")
    assert listing(folder) == before


def test_export_replaces_its_own_earlier_export_but_not_a_file_added_to_it(classifier, tmp_path):
    out = tmp_path / "export"
    result = quick_export(classifier, "--out", out)
    assert result.exit_code == 0 and MANIFEST not in result.output  # zoo's bookkeeping, not an output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "export" and set(manifest["entries"]) == {"model.keras", "model_folded.keras",
                                                                        "fold_report.json"}
    result = quick_export(classifier, "--out", out)  # its own earlier export: replaced
    assert result.exit_code == 0, result.output

    (out / "my_notes.txt").write_text("mine")
    assert_user_error(quick_export(classifier, "--out", out), "my_notes.txt", "--overwrite")
    assert (out / "my_notes.txt").read_text() == "mine"
    result = quick_export(classifier, "--out", out, "--overwrite")  # asked for: replaced
    assert result.exit_code == 0 and not (out / "my_notes.txt").exists()


def test_export_into_its_own_run_folder_is_refused_even_with_overwrite(cnn_bn_run):
    before = listing(cnn_bn_run)
    for extra in ((), ("--overwrite",)):
        assert_user_error(quick_export(cnn_bn_run, "--out", cnn_bn_run, *extra), "would replace the input")
    assert listing(cnn_bn_run) == before


def test_train_refuses_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "model.keras").write_bytes(b"the user's own model")
    result = invoke("train", "cnn_bn", "--epochs", 1, "--image-size", 8, "--out", out)
    assert_user_error(result, "not a zoo run folder", "--overwrite")
    assert (out / "model.keras").read_bytes() == b"the user's own model"
    assert [p.name for p in tmp_path.iterdir()] == ["project"]  # no staging folder left


def test_a_run_folder_takes_a_new_run_and_keeps_what_else_is_there(cnn_bn_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cnn_bn_run, run)  # a copy keeps sizes and modification times, so it is still zoo's
    (run / "notes.txt").write_text("mine")
    result = invoke("train", "cnn_bn", "--epochs", 1, "--image-size", 8, "--out", run)
    assert result.exit_code == 0, result.output
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1

    (run / "history.csv").write_text("edited by hand")  # changed since zoo wrote it: the user's now
    assert_user_error(invoke("train", "cnn_bn", "--epochs", 1, "--image-size", 8, "--out", run), "history.csv")
    assert (run / "history.csv").read_text() == "edited by hand"


def test_a_report_never_replaces_a_file_inside_its_input_folder(classifier, tmp_path):
    out = tmp_path / "export"
    assert quick_export(classifier, "--out", out).exit_code == 0
    before = listing(out)
    for extra in ((), ("--overwrite",)):  # model.keras is zoo's, but it is the input of this command
        result = invoke("parity", out, "--json", out / "model.keras", *extra)
        assert_user_error(result, "would replace part of the input", "--json")
    assert listing(out) == before
    for attempt in range(2):  # a new report in the input folder is fine, and so is replacing it on the next run
        result = invoke("parity", out, "--json", out / "parity.json", *(("--overwrite",) if attempt else ()))
        assert result.exit_code == 0, result.output


def test_recalibrate_refuses_a_folder_named_like_its_output_and_its_own_input(classifier, tmp_path):
    folder = tmp_path / "X.keras"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    result = invoke("recalibrate-bn", classifier, "--dataset", "digits", "--out", folder)
    assert_user_error(result, str(folder), "is a folder zoo did not write")
    assert (folder / "keep.txt").read_text() == "mine"
    before = classifier.read_bytes()
    result = invoke("recalibrate-bn", classifier, "--dataset", "digits", "--out", classifier, "--overwrite")
    assert_user_error(result, "would replace the input")
    assert classifier.read_bytes() == before


def test_json_reports_replace_only_zoo_reports(tmp_path):
    report = tmp_path / "report.json"
    write_text(report, "{}")
    write_text(report, '{"again": 1}')  # zoo's own, unchanged: replaced
    report.write_text("edited")
    with pytest.raises(ExportError, match="zoo did not write it"):
        write_text(report, "{}")
    assert report.read_text() == "edited"
    write_text(report, "{}", overwrite=True)
    assert report.read_text() == "{}"
    with pytest.raises(ExportError, match="is a folder zoo did not write"):
        check_target(tmp_path, option="--json")


def test_a_failed_write_leaves_the_old_output_and_no_new_folders(tmp_path):
    write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "a.json") as tmp:
        tmp.write_text("new")
        raise RuntimeError("writer failed")
    assert (tmp_path / "a.json").read_text() == "old"
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "new" / "deeper" / "b.json") as tmp:
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "a.json"]


# -- 2. outputs that would collide -----------------------------------------------------------------------------------

def write_png(path, side=20, value=128):
    from PIL import Image

    Image.fromarray(np.full((side, side), value, np.uint8)).save(path)
    return path


def test_denoise_outputs_that_collide_are_an_error_before_anything_runs(denoiser, tmp_path):
    pic, pic_noisy = write_png(tmp_path / "pic.png"), write_png(tmp_path / "pic_noisy.png", value=30)
    out = tmp_path / "out"
    result = invoke("denoise", denoiser, pic, pic_noisy, "--sigma", 25, "--out", out)
    assert_user_error(result, "pic_noisy.png would be written twice", "noisy copy of", "result of")
    assert not out.exists()


def test_denoise_never_writes_over_its_input_and_reruns_over_its_own_outputs(denoiser, tmp_path):
    pic = write_png(tmp_path / "pic.png")
    before = pic.read_bytes()
    assert_user_error(invoke("denoise", denoiser, pic, "--out", tmp_path, "--overwrite"), "would replace the input")
    assert pic.read_bytes() == before

    out = tmp_path / "denoised"
    for _ in range(2):  # the second run replaces the first run's files
        result = invoke("denoise", denoiser, pic, "--sigma", 25, "--out", out)
        assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"pic.png", "pic_noisy.png", MANIFEST}
    (out / "pic.png").write_bytes(b"the user's edit")
    assert_user_error(invoke("denoise", denoiser, pic, "--out", out), "pic.png", "--overwrite")
    assert (out / "pic.png").read_bytes() == b"the user's edit"


# -- 3. partial outputs: cleaned after SIGKILL, never left by SIGTERM --------------------------------------------------

def zoo_command(*args):
    code = "import sys; from zoo.cli import app; sys.argv = ['zoo', *sys.argv[1:]]; app()"
    return [sys.executable, "-c", code, *map(str, args)]


def wait_for_partial(process, folder, name, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        partials = [p for p in folder.iterdir() if p.name.startswith(f".{name}.partial-")]
        if partials:
            return partials
        time.sleep(0.02)
    raise AssertionError(f"no partial of {name} appeared (exit code {process.poll()})")


def test_sigkill_leaves_a_partial_that_the_next_export_removes_and_sigterm_leaves_none(classifier, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "export"
    process = subprocess.Popen(zoo_command("export", classifier, "--out", out, "--onnx", "--no-parity"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partials = wait_for_partial(process, tmp_path, "export")
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert all(p.exists() for p in partials) and not out.exists()

    alive = tmp_path / f".export.partial-{os.getpid()}-{_start_time()}-feedbeef"  # a live writer's: kept
    alive.mkdir()
    result = quick_export(classifier, "--out", out)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in partials) and alive.exists()
    alive.rmdir()

    process = subprocess.Popen(zoo_command("export", classifier, "--out", out, "--onnx", "--no-parity"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_partial(process, tmp_path, "export")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    assert "terminated" in process.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the earlier export, untouched
    assert not (out / "model.onnx").exists()


def _start_time():
    with open(f"/proc/{os.getpid()}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[19]


def test_stale_partials_of_other_targets_are_left_alone(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = tmp_path / f".a.partial-{dead.pid}-1-00000000"
    other = tmp_path / f".b.partial-{dead.pid}-1-00000000"
    foreign = tmp_path / ".a.partial-not-ours"
    for folder in (mine, other, foreign):
        folder.mkdir()
    assert remove_stale_partials(tmp_path / "a") == [mine]
    assert other.exists() and foreign.exists()


# -- 4. hostile .keras archives ----------------------------------------------------------------------------------------

def deflated_zeros_member(archive, name, size):
    """A member of `size` zero bytes, deflated (~1000×), written in chunks so the test stays small in memory."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as member:
        chunk = bytes(2**20)
        for _ in range(size // len(chunk)):
            member.write(chunk)


def test_a_zip_bomb_keras_is_refused_quickly_without_inflating_it(tmp_path):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        deflated_zeros_member(archive, "config.json", 256 * 2**20)
    assert bomb.stat().st_size < 2**20
    started = time.perf_counter()
    result = quick_export(bomb)
    assert_user_error(result, "not a safe .keras archive", "config.json")
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "bomb_export").exists()


def test_archive_entries_with_parent_paths_are_refused(tmp_path):
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("../../outside.txt", "x")
    assert_user_error(quick_export(evil), "'..'")


# -- 5. messages that name the cause -----------------------------------------------------------------------------------

def test_export_under_a_path_that_cannot_be_created(classifier):
    assert_user_error(quick_export(classifier, "--out", "/proc/zoo-test/export"), "cannot create folder /proc/zoo-test")
    # /proc exists, and os.access says root may write there, but nothing can be created in it
    assert_user_error(quick_export(classifier, "--out", "/proc/zoo-test"), "folder /proc is not writable")


def test_a_triton_name_too_long_writes_nothing(classifier, tmp_path):
    out, repo = tmp_path / "export", tmp_path / "repo"
    result = invoke("export", classifier, "--out", out, "--no-parity", "--triton", repo, "--triton-name", "n" * 300)
    assert_user_error(result, "--triton-name", "300 bytes")
    assert not out.exists() and not repo.exists()


def test_stylize_names_the_input_an_onnx_model_would_need(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["ids"], ["out"], to=TensorProto.FLOAT)], "ids",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "h", "w", 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", "h", "w", 3])])
    model = tmp_path / "ids.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    result = invoke("stylize", model, write_png(tmp_path / "pic.png"), "--out", tmp_path / "out")
    assert_user_error(result, "takes int64 input 'ids'", "float images")


def test_a_png_header_declaring_10_gigapixels_gets_the_max_pixels_message(denoiser, tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = tmp_path / "huge.png"
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    result = invoke("denoise", denoiser, huge, "--out", tmp_path / "out")
    assert_user_error(result, "100000×100000", "--max-pixels")


def test_a_backup_left_between_the_two_renames_of_a_swap_is_put_back(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    backup = tmp_path / f".export.old-{dead.pid}-1-00000000"
    backup.mkdir()
    (backup / "model.onnx").write_text("the previous export")
    remove_stale_partials(tmp_path / "export")  # the target is missing: the backup is the user's last export
    assert (tmp_path / "export" / "model.onnx").read_text() == "the previous export" and not backup.exists()
