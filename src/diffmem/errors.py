"""The one error type users see: its message is printed as a single line, exit status 2."""


class DiffmemError(ValueError):
    """Bad input or an impossible request; the message names the input and what is wrong."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`DiffmemError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DiffmemError(message)


def available_bytes() -> int | None:
    """Memory the machine can still give (``MemAvailable`` of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(nbytes: float, what: str, share: float = 0.5) -> None:
    """Refuse, before allocating, a request whose results alone would take more than ``share`` of the
    memory still available; ``what`` names the request (e.g. ``"n=10^12 samples of 1×16×16"``)."""
    free = available_bytes()
    if free is not None and nbytes > share * free:
        raise DiffmemError(f"{what}: needs about {nbytes / 2 ** 30:.3g} GiB, more than half of the "
                           f"{free / 2 ** 30:.3g} GiB this machine has free")
