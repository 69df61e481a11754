"""The one exception type for mistakes a user can fix (bad file, bad option)."""


class InputError(Exception):
    """A user mistake: reported as one line, without a traceback, and nothing is written."""


INTERRUPTED = "samprostate: interrupted"  # the CLI's last line when stopped (Ctrl-C, or Stop in the training tab)
