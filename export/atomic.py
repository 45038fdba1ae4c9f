"""Outputs that are complete or absent, and that never replace what zoo did not write.

Atomic. Writers write into a temporary sibling (same folder, so same filesystem), named
`.NAME.partial-PID-START-RANDOM`, and the result is moved into place with `os.replace` only when the writer
finished without an exception. A failure, Ctrl-C or SIGTERM (the CLI turns it into an exception) removes the
temporary and leaves whatever was at the final path untouched. A SIGKILL cannot be caught: its partial stays, and
the next writer of the same target removes it once the process named in it (PID and start time, so a reused PID
does not count) is gone.

Ownership. zoo replaces only what zoo wrote, unless the user passes `overwrite` (`--overwrite`). It knows what it
wrote from a small manifest, `.zoo-manifest.json`, never from file names:

- a folder zoo writes as a whole (an export, a run, a Triton model) holds a manifest naming its kind and each
  entry zoo put in it. A writer of the same kind may replace it while every entry is still zoo's: listed (a file
  with the size and modification time zoo left) or itself a zoo folder (an export inside a run);
- a loose file zoo writes (a report, an image, a recalibrated `.keras`) is recorded in its folder's manifest with
  its size and modification time, and may be replaced while both are unchanged.

A missing path or an empty folder is free. A path that is, or holds, one of the command's own inputs (`sources`),
or that already exists inside an input folder (`zoo parity EXPORT --json EXPORT/model.onnx`), is never a target,
even with `overwrite` — unless it is a loose file zoo wrote there (last run's `EXPORT/parity.json`).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from export.errors import ExportError
from export.version import zoo_version

MANIFEST = ".zoo-manifest.json"
PARTIAL, BACKUP = "partial", "old"
SHOWN = 4  # foreign entries named in an error


@contextmanager
def atomic_output(final_path: Path | str, *, kind: str | None = None, overwrite: bool = False,
                  sources: Iterable[Path | str] = (), option: str = "--out", suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling path to write a file (`kind` None) or a folder of `kind` into; move it to
    `final_path` on success, recording it as zoo's. Missing parent folders are created (and removed again if the
    write fails). `option` names the flag in errors; `suffix` ends the temporary's name (Keras saves only to
    `*.keras`)."""
    final_path = Path(final_path)
    check_target(final_path, kind=kind, overwrite=overwrite, sources=sources, option=option)
    created = make_parents(final_path, option)
    remove_stale_partials(final_path)
    tmp = _sibling(final_path, PARTIAL, suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise ExportError(f"nothing was written for {final_path}")
        if kind is not None:
            if not tmp.is_dir():
                raise ExportError(f"{final_path} should be a folder but a file was written")
            write_manifest(tmp, {"kind": kind, "entries": _entries(tmp)})
        _move_into_place(tmp, final_path)
    except BaseException:
        _remove(tmp)
        remove_empty(created)
        raise
    if kind is None:
        record_written(final_path)


def write_text(path: Path | str, text: str, *, overwrite: bool = False, sources: Iterable[Path | str] = (),
               option: str = "--json") -> Path:
    """Write a text file (a JSON report) atomically, under the ownership rule."""
    path = Path(path).expanduser()
    with atomic_output(path, overwrite=overwrite, sources=sources, option=option) as tmp:
        tmp.write_text(text)
    return path


def check_target(path: Path | str, *, kind: str | None = None, overwrite: bool = False,
                 sources: Iterable[Path | str] = (), option: str = "--out") -> None:
    """Raise ExportError (one line, naming the way out) unless `path` may be written: see the module docstring.
    Cheap; commands call it before any long work, `atomic_output` calls it again."""
    path = Path(path).expanduser()
    _check_not_a_source(path, sources, option)
    if overwrite or not os.path.lexists(path):
        return
    way_out = f"choose another {option} or pass --overwrite to replace it"
    is_folder = path.is_dir() and not path.is_symlink()
    if kind is not None and not is_folder:
        raise ExportError(f"{option} {path} is a file, and {_a(kind)} is a folder: {way_out}")
    if kind is None:
        if not _recorded(path.parent, path.name):
            what = "is a folder zoo did not write" if is_folder else \
                "already exists and zoo did not write it (or it changed since)"
            raise ExportError(f"{option} {path} {what}: {way_out}")
        return
    reason = refusal_reason(path, kind)
    if reason:
        raise ExportError(f"{option} {path} is a folder zoo may not replace ({reason}): {way_out}")


def check_files_replaceable(folder: Path, names: Iterable[str], *, overwrite: bool = False,
                            option: str = "--out") -> None:
    """For a writer that puts `names` into an existing `folder` and keeps the rest (a run folder): each of them that
    exists must be zoo's."""
    if overwrite:
        return
    foreign = [name for name in names if os.path.lexists(folder / name) and not _owned_entry(folder, name)]
    if foreign:
        raise ExportError(f"{option} {folder} holds {_names(foreign)}, which zoo did not write (or which changed "
                          f"since): choose another {option} or pass --overwrite to replace it")


def refusal_reason(folder: Path, kind: str) -> str | None:
    """Why a writer of `kind` may not replace `folder` (None: it may). An empty folder is free."""
    present = sorted(entry.name for entry in folder.iterdir() if entry.name != MANIFEST)
    manifest = read_manifest(folder)
    if not present and manifest is None:
        return None
    if manifest is None:
        return f"zoo did not write it (no {MANIFEST}); it holds {_names(present)}"
    if manifest.get("kind") != kind:
        return f"it is a zoo {manifest.get('kind') or 'output'} folder, not {_a(kind)}"
    foreign = [name for name in present if not _owned_entry(folder, name)]
    return f"it holds {_names(foreign)}, which zoo did not write or which changed since" if foreign else None


def record_written(path: Path, *, entries: dict | None = None, kind: str | None = None) -> None:
    """Record `path` (a file zoo just wrote) in its folder's manifest; with `entries`/`kind`, record those
    instead (a writer that filled a folder in place)."""
    folder = path.parent
    manifest = read_manifest(folder) or {"kind": kind, "entries": {}}
    if kind is not None:
        manifest["kind"] = kind
    manifest.setdefault("entries", {}).update(entries if entries is not None else
                                              {path.name: {**entry_of(path), "loose": True}})
    write_manifest(folder, manifest)


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("written_by") != "zoo" or \
            not isinstance(manifest.get("entries"), dict):
        return None
    return manifest


def make_partial_dir(final_path: Path) -> Path:
    """A fresh partial folder beside `final_path`, for writers that publish it themselves (training runs)."""
    remove_stale_partials(final_path)
    tmp = _sibling(final_path, PARTIAL, "")
    tmp.mkdir()
    return tmp


def remove_stale_partials(final_path: Path) -> list[Path]:
    """Remove the partials of `final_path` whose writer process is gone (a SIGKILL's leftovers); a backup left
    between the two renames of a folder swap is put back when the final path is missing. Returns what it removed."""
    parent, removed = final_path.parent, []
    if not parent.is_dir():
        return removed
    for what in (PARTIAL, BACKUP):
        prefix = f".{final_path.name}.{what}-"
        for entry in parent.iterdir():
            if not entry.name.startswith(prefix) or _writer_alive(entry.name[len(prefix):]):
                continue
            if what == BACKUP and not os.path.lexists(final_path):
                os.replace(entry, final_path)
                continue
            _remove(entry)
            removed.append(entry)
    return removed


# -- internals ---------------------------------------------------------------------------------------------------

def _check_not_a_source(path: Path, sources: Iterable[Path | str], option: str) -> None:
    target, folder = path.resolve(), path.parent.resolve()
    exists = os.path.lexists(path)
    for source in sources:
        resolved = Path(source).expanduser().resolve()
        if resolved == target or target in resolved.parents:
            raise ExportError(f"{option} {path} would replace the input {source}; choose another {option}")
        if exists and (resolved == folder or resolved in folder.parents) and not _recorded(folder, path.name,
                                                                                          loose=True):
            raise ExportError(f"{option} {path} would replace part of the input {source}; choose another {option}")


def _owned_entry(folder: Path, name: str) -> bool:
    """Whether `folder/name` is zoo's: recorded in the folder's manifest, or a zoo folder of its own (an export
    inside a run folder)."""
    path = folder / name
    if path.is_dir() and not path.is_symlink() and read_manifest(path) is not None:
        return True
    return _recorded(folder, name)


def _recorded(folder: Path, name: str, *, loose: bool = False) -> bool:
    """Whether the folder's manifest records `name` as it is now (a file: same size and modification time); with
    `loose`, only a loose file zoo wrote there (a report, an image), not part of an export or run it filled."""
    recorded = (read_manifest(folder) or {}).get("entries", {}).get(name)
    if not (isinstance(recorded, dict) and os.path.lexists(folder / name)):
        return False
    same = {key: value for key, value in recorded.items() if key != "loose"} == entry_of(folder / name)
    return same and (recorded.get("loose", False) or not loose)


def entry_of(path: Path) -> dict:
    """How a manifest records `path`: size and modification time of a file, or that it is a folder."""
    info = path.lstat()
    if stat.S_ISDIR(info.st_mode):
        return {"dir": True}
    if not stat.S_ISREG(info.st_mode):
        return {"other": True}
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _entries(folder: Path) -> dict:
    return {entry.name: entry_of(entry) for entry in folder.iterdir() if entry.name != MANIFEST}


def write_manifest(folder: Path, manifest: dict) -> None:
    manifest = {"written_by": "zoo", "version": zoo_version(), **{k: v for k, v in manifest.items()
                                                                if k not in ("written_by", "version")}}
    tmp = folder / f"{MANIFEST}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)


def _a(kind: str) -> str:
    """'an export', 'a run'."""
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _names(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def make_parents(final_path: Path, option: str = "--out") -> list[Path]:
    """Create the missing folders above `final_path`; returns the ones created, outermost first, so that a writer
    that fails can remove them again. ExportError (one line) when they cannot be created or written."""
    parent, missing = final_path.parent, []
    folder = parent
    while not os.path.lexists(folder) and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write {option} {final_path}: {folder} is a file, not a folder; choose another "
                          f"{option}")
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except OSError as error:
            remove_empty(created)
            raise ExportError(f"cannot create folder {folder} for {option} {final_path}: "
                              f"{error.strerror or error}; choose another {option}") from None
        created.append(folder)
    # tried, not os.access: root passes os.access where nothing can be created (/proc, other virtual folders); the
    # probe has a partial's name, so a SIGKILL right here leaves one that the next writer removes
    probe = _sibling(final_path, PARTIAL, "")
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as error:
        remove_empty(created)
        raise ExportError(f"cannot write {option} {final_path}: folder {parent} is not writable "
                          f"({error.strerror or error}); choose another {option}") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders `make_parents` created (innermost first), as far as they are still empty."""
    for folder in reversed(folders):
        with suppress(OSError):
            folder.rmdir()


def _sibling(final_path: Path, what: str, suffix: str) -> Path:
    token = f"{os.getpid()}-{_start_time(os.getpid())}-{uuid.uuid4().hex[:8]}"
    return final_path.parent / f".{final_path.name}.{what}-{token}{suffix}"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), 0 where /proc does not tell; None: no such
    process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else 0
    except OSError:
        return 0
    return int(text.rpartition(")")[2].split()[19])


def _writer_alive(token: str) -> bool:
    """Whether the process named in a partial's token (PID-START-RANDOM[suffix]) still runs."""
    pid_text, _, rest = token.partition("-")
    start_text = rest.partition("-")[0]
    if not (pid_text.isdigit() and start_text.isdigit()):
        return True  # not one of ours: leave it alone
    pid, start = int(pid_text), int(start_text)
    now = _start_time(pid)
    if now is None:
        return False
    if now and start:
        return now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(tmp: Path, final_path: Path) -> None:
    """os.replace for files; a folder (or a change of kind) is swapped via a backup that is restored on failure,
    because os.replace cannot replace a non-empty directory."""
    if not final_path.is_dir() and not (tmp.is_dir() and os.path.lexists(final_path)):
        os.replace(tmp, final_path)
        return
    backup = _sibling(final_path, BACKUP, "")
    os.replace(final_path, backup)
    try:
        os.replace(tmp, final_path)
    except BaseException:
        os.replace(backup, final_path)
        raise
    _remove(backup)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)
