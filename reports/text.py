"""One-line texts of errors and warnings, for the command lines of ``benchmark`` and
``reports`` (no heavy imports)."""

from __future__ import annotations

__all__ = ["first_line", "one_line", "warning_line"]


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def one_line(err: BaseException, limit: int | None = None) -> str:
    """``Type: message`` on one line (whitespace collapsed); a message longer than ``limit``
    characters is cut to ``limit`` with ``...``."""
    text = " ".join(str(err).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def warning_line(message: object) -> str:
    """A warning as the command lines show it: ``warning: <message>`` (no file, line, source)."""
    return f"warning: {message}"
