"""Errors the user can fix: the CLI prints them as one line, without a traceback."""


class CsptError(Exception):
    """A problem with the user's input (a file, a folder, a config value)."""
