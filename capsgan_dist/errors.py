"""Errors that mean "the user gave us bad input" (config, data, checkpoint, paths), and our warnings.

The CLI turns these errors into one clear line and exit code 2; anything else is a bug and keeps its
traceback. Our warnings print as one line, `capsgan: warning: ...`, like our errors.
"""

from __future__ import annotations

import errno
import warnings


class UserError(Exception):
    """Bad input: the message says what is wrong, where, and how to fix it."""


class ConfigError(UserError):
    """A config file or override is invalid."""


class DataError(UserError):
    """A dataset is missing, corrupt or does not fit the model config."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or from a different model config."""


class NonFiniteError(RuntimeError):
    """Training produced too many non-finite losses or gradients in a row."""


def explain_os_error(e: OSError) -> str | None:
    """One line for a disk-full or unwritable-path error met while writing run files; None otherwise."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on device{where}; free disk space or set train.out_dir to a disk with room, "
                "then resume the run")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{e.strerror}{where}; fix the permissions or set train.out_dir to a writable folder"
    return None


class CapsganWarning(UserWarning):
    """Something the user should know that does not stop the run (a skipped checkpoint, a fallback)."""


def warn(message: str) -> None:
    """Warn the user; printed as one line `capsgan: warning: MESSAGE` (no source line after it)."""
    warnings.warn(message, CapsganWarning, stacklevel=2)


_python_format = warnings.formatwarning


def _format(message: Warning | str, category: type[Warning], filename: str, lineno: int,
            line: str | None = None) -> str:
    if issubclass(category, CapsganWarning):
        return f"capsgan: warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)


# Installed on import so every entry point (CLI, torchrun ranks, Ray trials) prints ours the same way;
# other libraries' warnings keep Python's format.
warnings.formatwarning = _format
