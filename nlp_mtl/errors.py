"""User-facing errors.

Anything the user can fix by editing a file or a flag raises :class:`UserError`. The CLI prints
its message as one paragraph and exits with code 2, without a traceback; programming errors
keep their tracebacks because those are ours to fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input (config, spec, data or flags)."""

    exit_code = 2


class ConfigError(UserError):
    """An experiment config or task spec is malformed."""


class DataError(UserError):
    """A data file does not match what its task spec declares."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
