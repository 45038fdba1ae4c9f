"""Domain errors of the zoo package: the message is one line a user can act on (what is wrong, what to do)."""


class ZooError(Exception):
    """A user-facing failure; the CLI prints `error: <message>` and exits 1."""
