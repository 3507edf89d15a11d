"""Errors the user can fix: the CLI prints them as one line, without a traceback."""


class CsptError(Exception):
    """A problem with the user's input (a file, a folder, a config value)."""


class SomeInputsFailed(CsptError):
    """A prediction wrote every input it could read; the others (each named in the log) failed."""


def user_message(err: BaseException) -> str:
    """The one-line message of ``err``, also when a data loader worker raised it.

    PyTorch re-raises a worker's exception with its whole traceback in the message
    ("Caught CsptError in DataLoader worker process 0. Original Traceback ..."); the
    user's message is its last line, after the exception's name.
    """
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
