"""The one exception type for mistakes a user can fix (bad file, bad option)."""


class InputError(Exception):
    """A user mistake: reported as one line, without a traceback, and nothing is written."""
