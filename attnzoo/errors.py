"""attnzoo's exception policy: which errors are the user's input, which are bugs.

A *user error* is a wrong input that attnzoo (or jsonargparse, for a command line) recognised and
described: the CLI prints its message as one paragraph and exits with status 2, no traceback.
Anything else is a bug and keeps its traceback. ``--debug`` or ``ATTNZOO_DEBUG=1`` shows the
traceback of a user error too.

User errors are:

* :class:`AttnzooError` (a ``ValueError``) and its subclasses, raised by attnzoo for bad input;
* ``ValueError``, ``TypeError``, ``KeyError``, ``FileNotFoundError``, ``NotADirectoryError``,
  ``IsADirectoryError`` and ``PermissionError`` raised *with a message*, while a command reads
  and checks its input (before training starts; the training CLI tracks that phase);
* jsonargparse's ``ArgumentError`` (a bad command line or config key).

A ``ValueError`` without a message, an ``IndexError``, an ``AttributeError``, a ``RuntimeError``
and so on are not the user's fault and are shown with their traceback.
"""
from __future__ import annotations

import os

__all__ = ["AttnzooError", "ArgumentTypeError", "UnsafeCheckpointError", "DataError", "USER_ERRORS", "is_user_error", "debug_enabled",
           "user_message"]


class AttnzooError(ValueError):
    """A bad input attnzoo recognised; the message says what was wrong and what would be right."""


class ArgumentTypeError(AttnzooError, TypeError):
    """A keyword argument of the wrong type (a ``TypeError`` and, as every bad input, a ``ValueError``)."""


class UnsafeCheckpointError(AttnzooError):
    """A checkpoint that is not plain data (it would import or call Python code when unpickled)."""


class DataError(AttnzooError):
    """A data set whose files do not match what the model or the data format expects."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
)


def _jsonargparse_errors() -> tuple[type[BaseException], ...]:
    try:
        from jsonargparse import ArgumentError
    except ImportError:  # pragma: no cover - jsonargparse comes with lightning[extra]
        return ()
    return (ArgumentError,)


def is_user_error(exc: BaseException) -> bool:
    """True when ``exc`` is a described bad input (see the module docstring), not a bug."""
    if isinstance(exc, AttnzooError) or isinstance(exc, _jsonargparse_errors()):
        return True
    return isinstance(exc, USER_ERRORS) and bool(exc.args) and bool(str(exc.args[0]).strip())


def debug_enabled(argv: list[str] | None = None) -> bool:
    """``--debug`` on the command line or ATTNZOO_DEBUG (or the older ATTNZOO_TRACEBACK) set to a true value."""
    for var in ("ATTNZOO_DEBUG", "ATTNZOO_TRACEBACK"):
        if os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no"):
            return True
    return bool(argv) and "--debug" in argv


def user_message(exc: BaseException) -> str:
    """The message of a user error as one paragraph (a KeyError's message without its quotes)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text).strip()
