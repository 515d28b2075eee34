"""Errors that mean "the user gave us bad input" (config, data, checkpoint, paths).

The CLI turns these into one clear line and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno


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
