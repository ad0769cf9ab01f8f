"""The one exception type for mistakes a user can fix: the CLI prints its message, no traceback."""


class LitDFTError(ValueError):
    """Bad configuration or input: a missing file, an unknown name, an unusable data set."""
