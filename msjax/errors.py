"""The errors msjax reports to its users, as opposed to its bugs.

Every problem a user can fix (a bad path, config field, command-line argument, data set or
weight file) is raised as a subclass of `UserError`, with a message that names the file,
folder, field or argument at fault and what was expected. The command-line runner
(`msjax.cli`) prints such a message as one `error: ...` line and exits with status 2.
Anything else that escapes a command is a bug in msjax and keeps its traceback.

`UserError` derives from `Exception` only, never from a builtin such as `ValueError`, so
that catching it can never swallow an internal error by accident.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and where."""


class ConfigError(UserError):
    """A config field or command-line argument has a value msjax cannot use."""


class DataError(UserError):
    """A raw or prepared data set is missing, incomplete or unreadable."""


class WeightsError(UserError):
    """A weight file (.pth) or a converted weights folder cannot be used."""


class CheckpointError(UserError):
    """A train state cannot be saved or restored."""


class WorkdirError(UserError):
    """A run folder cannot hold this run (unwritable, or another experiment's)."""


class TrainingError(UserError):
    """A run that cannot start or had to stop (e.g. a non-finite loss)."""


class OutputError(UserError):
    """An output cannot be written (disk full, no permission); what was there is intact."""
