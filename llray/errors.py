"""Exceptions shared across llray's layers."""


class ConfigError(ValueError):
    """A user-facing configuration error: names the field and what is allowed.

    The CLI turns it into one line on stderr and exit code 2, before any work starts.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class Diverged(RuntimeError):
    """Raised inside training when the loss stops being finite."""
