"""The one error type users see: its message is printed as a single line, exit status 2."""


class DiffmemError(ValueError):
    """Bad input or an impossible request; the message names the input and what is wrong."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`DiffmemError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DiffmemError(message)
