"""Domain errors of the export package: one line a user can act on (what is wrong, what to do)."""


class ExportError(Exception):
    """A user-facing export/parity failure; the CLI prints `error: <message>` and exits 1."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception message (its type when the message is empty)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
