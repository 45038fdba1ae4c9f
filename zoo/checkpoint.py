"""Per-epoch training checkpoints: what `zoo train --resume` continues from after a crash or a kill.

After every epoch the callback saves the model — weights *and* optimizer state (moments, step count, so the
learning-rate schedule goes on where it was) in one `.keras` — then atomically replaces `state.json`, which names
that file, the epoch count and the history so far (both written through export/atomic.py, like every output). A
kill at any moment leaves either the previous complete checkpoint or the new one, never a mix. The data pipeline's randomness depends only on (seed, epoch)
(zoo/data/pipeline.py), so the resumed epochs see the batches the uninterrupted run would have seen.

The checkpoint lives beside the run directory (`.NAME.checkpoint/`), outside the staging directory that a failed
run removes, and is deleted once the run has been published. It records a fingerprint of the run's settings; a
resume with other settings (another model, dataset, batch size …) is refused rather than silently mixed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import keras

from export.atomic import atomic_output, write_text
from zoo.errors import ZooError

STATE = "state.json"


def checkpoint_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.checkpoint"


class EpochCheckpoint(keras.callbacks.Callback):
    def __init__(self, directory: Path, fingerprint: dict[str, Any], history: dict[str, list[float]]) -> None:
        super().__init__()
        self.directory = directory
        self.fingerprint = fingerprint
        self.history = {key: list(values) for key, values in history.items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        name = f"epoch-{epoch + 1:04d}.keras"
        # the checkpoint folder is zoo's own (hidden, beside the run): its files are replaced without asking
        with atomic_output(self.directory / name, overwrite=True, suffix=".keras") as tmp:  # Keras saves to *.keras
            self.model.save(tmp)
        state = {"fingerprint": self.fingerprint, "epoch": epoch + 1, "model": name, "history": self.history}
        write_text(self.directory / STATE, json.dumps(state, indent=1), overwrite=True)
        for old in self.directory.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)


def load_checkpoint(directory: Path, fingerprint: dict[str, Any]) -> tuple[keras.Model, int, dict] | None:
    """(compiled model with its optimizer state, completed epochs, history) from `directory`, or None if there is
    no checkpoint; a ZooError when it belongs to a run with other settings."""
    try:
        state = json.loads((directory / STATE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ZooError(f"the checkpoint {directory} is unreadable ({error}); delete it to start over") from None
    if state.get("fingerprint") != fingerprint:
        saved = state.get("fingerprint") or {}
        differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        shown = ", ".join(f"{k} {saved.get(k)!r} (now {fingerprint.get(k)!r})" for k in differ)
        raise ZooError(f"the checkpoint in {directory} is from another run: {shown}; run the same command, or "
                       f"delete {directory} to start over")
    try:
        model = keras.saving.load_model(directory / state["model"])
    except Exception as error:  # noqa: BLE001 - any load failure means the same thing to the user
        raise ZooError(f"cannot load the checkpoint {directory / state['model']} ({error}); delete {directory} "
                       "to start over") from None
    return model, int(state["epoch"]), state["history"]


def remove_checkpoint(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
