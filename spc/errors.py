"""Errors the SPC core raises for bad input: each names where the problem is."""

from __future__ import annotations

__all__ = ["SpcInputError"]


class SpcInputError(ValueError):
    """Bad input to an SPC function or to ``analyze``.

    ``path`` is a dotted/indexed location in the request (``data[3][1]``,
    ``capability.lsl``); ``message`` says what is wrong there.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
