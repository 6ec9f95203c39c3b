"""The one error base for user and device faults.

Every package (``trainer``, ``quantize``, ``firmware_export``, ``targets``)
raises subclasses of :class:`EdgeSmithError` for problems the user can act on:
bad input, a missing file, a device that does not answer. The CLI prints them
as one message and exits non-zero; anything else is a bug and keeps its
traceback. This module imports nothing so any package may depend on it.
"""


class EdgeSmithError(Exception):
    """A fault the user can fix: what failed, expected vs actual, what to do next."""


class ConfigError(EdgeSmithError):
    """A configuration key, value or type is not valid."""


class DataError(EdgeSmithError):
    """A dataset is missing, truncated, corrupt or in an unknown format."""


class CheckpointError(EdgeSmithError):
    """A checkpoint cannot be written, read or does not match the model."""


class ExportError(EdgeSmithError):
    """Model export failed or the exported model does not match PyTorch."""


class TrainingError(EdgeSmithError):
    """Training cannot continue (for example the loss became NaN)."""
