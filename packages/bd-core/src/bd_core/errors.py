"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""


class BdError(Exception):
    """An error whose message says what went wrong and how to fix it."""


class DataNotFound(BdError):
    """A dataset is not on disk where bd looked."""


class UnsafeModelFile(BdError):
    """A model file is not a safetensors file (bd never unpickles model files)."""


class InvalidRequest(BdError):
    """A parameter value is out of range or inconsistent with the data."""
