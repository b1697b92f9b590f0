"""The errors a user can cause or meet, as opposed to bugs.

An `OrstreamError` is expected: a bad argument, config key or file, a port already taken, a
backend or precision this machine cannot serve, a missing INT8 engine. Its message is one line
(or a few) that names the input and says what to do; the CLI prints it without a traceback and
exits with `exit_code`. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class OrstreamError(Exception):
    """An expected error. `exit_code` 2: the work could not start or go on as asked."""

    exit_code: int = 2


class UsageError(OrstreamError, ValueError):
    """A bad argument, config value, path or file; the message names it and the fix."""
