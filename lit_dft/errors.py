"""The one exception type for mistakes a user can fix: the CLI prints its message, no traceback."""

from __future__ import annotations


class LitDFTError(ValueError):
    """Bad configuration or input: a missing file, an unknown name, an unusable data set."""

    last_message: str | None = None
    """The latest one's message: the CLI finds it in a parser's error that quotes it (jsonargparse instantiates
    classes while parsing and reports their errors as text, without the exception)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        LitDFTError.last_message = message

    @classmethod
    def quoted_in(cls, error: BaseException) -> str | None:
        """The latest LitDFTError's message if ``error``'s message quotes it, else None."""
        return cls.last_message if cls.last_message and cls.last_message in str(error) else None
