"""Atomic outputs: an export is either complete at its final path or absent.

Writers write into a temporary sibling (same folder, so same filesystem) and the result is moved into place with
`os.replace` only when the writer finished without an exception. A failure removes the temporary and leaves any
previous file or folder at the final path untouched.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from export.errors import ExportError


@contextmanager
def atomic_output(final_path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file or a folder into; move it to `final_path` on success.

    The parent folder must exist (creating it here would leave an empty folder behind after a failure).
    An existing file or folder at `final_path` is replaced; it is kept if anything fails.
    """
    final_path = Path(final_path)
    parent = final_path.parent
    if not parent.is_dir():
        raise ExportError(f"cannot write {final_path}: folder {parent} does not exist; create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"cannot write {final_path}: folder {parent} is not writable; choose another output folder")
    tmp = parent / f".{final_path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if not tmp.exists():
            raise ExportError(f"nothing was written for {final_path}")
        _move_into_place(tmp, final_path)
    except BaseException:
        _remove(tmp)
        raise


def _move_into_place(tmp: Path, final_path: Path) -> None:
    """os.replace for files; a folder (or a change of kind) is swapped via a backup that is restored on failure,
    because os.replace cannot replace a non-empty directory."""
    if not final_path.is_dir() and not (tmp.is_dir() and final_path.exists()):
        os.replace(tmp, final_path)
        return
    backup = final_path.parent / f".{final_path.name}.old-{uuid.uuid4().hex[:8]}"
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
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
