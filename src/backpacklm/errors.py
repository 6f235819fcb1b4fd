"""The one user-facing error type. The CLI prints its message on one line and exits with status 2."""


class BackpackError(Exception):
    """A problem with the user's input (file, argument, checkpoint), not a bug in backpacklm."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library messages can run to several lines), or its type's name:
    what a one-line BackpackError quotes of the error it replaces."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
