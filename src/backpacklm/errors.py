"""The one user-facing error type. The CLI prints its message on one line and exits with status 2."""


class BackpackError(Exception):
    """A problem with the user's input (file, argument, checkpoint), not a bug in backpacklm."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library messages can run to several lines), or its type's name:
    what a one-line BackpackError quotes of the error it replaces. A first line ending in ":" only introduces the
    reason (transformers' "Validation error for field 'n_layer':"), so the next line is joined to it."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
