"""Exceptions that reach the user, including those raised in a worker."""

from __future__ import annotations

from mesowriter._messages import RemoteError


class WriterError(RuntimeError):
    """A stream could not be written; raised in the user's process."""


class FrameRejected(ValueError):
    """A frame was refused (wrong shape or dtype); the stream stays open."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the `__cause__` of an error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def error_from_remote(err: RemoteError, context: str) -> WriterError:
    """A WriterError whose cause shows the worker's own traceback."""
    exc = WriterError(f"{context}: {err.type}: {err.message}")
    exc.__cause__ = RemoteTraceback(err.traceback)
    return exc


def remote_error(exc: BaseException) -> RemoteError:
    """Capture an exception (in a worker) for the trip to the parent."""
    import traceback

    return RemoteError(
        type=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        errno=getattr(exc, "errno", None),
    )
