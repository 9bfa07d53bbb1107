"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""


class BdError(Exception):
    """An error whose message says what went wrong and how to fix it."""


class DataNotFound(BdError):
    """A dataset is not on disk where bd looked."""


class UnsafeModelFile(BdError):
    """A model file is not a safetensors file (bd never unpickles model files)."""


class InvalidRequest(BdError):
    """A parameter value is out of range or inconsistent with the data."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss or non-finite weights. Not a request error: the unit
    ran, and is stored as failed with this reason (never as a result with ACC and ASR)."""
