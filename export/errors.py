"""Domain errors of the export package: one line a user can act on (what is wrong, what to do)."""


class ExportError(Exception):
    """A user-facing export/parity failure; the CLI prints `error: <message>` and exits 1."""
