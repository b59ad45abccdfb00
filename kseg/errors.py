"""The exceptions kseg raises for problems a user can fix (bad files, bad arguments), and `first_line`.

The library raises them with their cause chained (`raise ... from error`); only the command line
shortens them to one line (`kseg --debug` shows the whole trace).
"""

import re


class KsegError(Exception):
    """A problem with the user's input, reported on one line (the CLI prints it without a trace)."""


class DataError(KsegError, ValueError):
    """A data file or folder is unusable; the message names the file and the problem."""


class ArgumentError(KsegError, ValueError):
    """A builder or setting was given a value it cannot take; the message names the argument and what it takes."""


class ExportError(KsegError, RuntimeError):
    """A model cannot be exported as asked (for example it needs ops LiteRT does not have)."""


def first_line(error, limit=300):
    """The first meaningful line of an exception's message (or its type name), at most `limit` characters.

    Terminal colour codes are dropped, and Keras's "Exception encountered when calling ..." wrapper
    gives way to the line after it, which holds the cause.
    """
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("Exception encountered") and len(lines) > 1:
        return f"{type(error).__name__}: {lines[1]}"[:limit]
    return lines[0][:limit]
