"""The serving error: raised by the protocol, the tensor codecs and the app, answered as HTTP `status` with the JSON
body {"error": message}. Its own module so every part of the server can raise it without importing the others."""


class ProtocolError(Exception):
    """A request that does not fit the protocol or the model: HTTP `status` with {"error": message}."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
