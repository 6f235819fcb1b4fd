"""The one user-facing error type. The CLI prints its message on one line and exits with status 2."""


class BackpackError(Exception):
    """A problem with the user's input (file, argument, checkpoint), not a bug in backpacklm."""
