"""Errors that end a command with a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad input or a missing prerequisite: the message names the problem and the fix."""

    exit_code = 2
