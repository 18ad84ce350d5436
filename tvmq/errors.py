"""User-facing errors: each names the problem and the fix.

The CLI prints ``TvmqError`` as one line and exits with code 2.
"""
from __future__ import annotations


class TvmqError(Exception):
    """Base class: a problem with the user's input, with a hint on how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} (fix: {fix})" if fix else problem)


class ModelLoadError(TvmqError):
    """Missing, unreadable or corrupt model file."""


class UnsupportedOpError(TvmqError):
    """An operator tvmq (or TVM's frontend) cannot compile."""


class UnknownBoardError(TvmqError):
    """A board name that is not in the registry."""


class InputMismatchError(TvmqError):
    """Run-time input of the wrong shape, dtype or count."""


class ArtifactError(TvmqError):
    """Missing/corrupt artifact directory, or an unwritable output location."""


class ConfigError(TvmqError, ValueError):
    """An invalid quantization or tuning configuration."""


class DeviceError(TvmqError):
    """RPC tracker/server unreachable, no free board, session lost."""


class QuantizationParamError(TvmqError, ValueError):
    """Invalid quantization parameters in a model: scale, zero point, axis or their shapes."""
