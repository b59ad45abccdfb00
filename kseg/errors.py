"""The one exception type kseg raises for problems a user can fix (bad files, bad arguments)."""


class KsegError(Exception):
    """A problem with the user's input, reported on one line (the CLI prints it without a trace)."""


class DataError(KsegError, ValueError):
    """A data file or folder is unusable; the message names the file and the problem."""


class ExportError(KsegError, RuntimeError):
    """A model cannot be exported as asked (for example it needs ops LiteRT does not have)."""
