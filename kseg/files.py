"""Writing artifacts safely and measuring them: atomic writes, JSON files, sizes (on disk and gzipped), folder locks."""

import gzip
import json
import os
import socket
import tempfile


def write_atomic(path, data):
    """Writes bytes to `path` through a temporary file in the same folder and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=directory, prefix=".tmp-", delete=False) as f:
        f.write(data)
    publish(f.name, path)


def publish(tmp, path):
    """Gives a finished temporary file (from `tempfile`, mode 0600) its name, atomically, with the permissions
    `open()` would have given it."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, value):
    """`value` as indented JSON at `path`, written atomically."""
    write_atomic(path, json.dumps(value, indent=2).encode())


def read_json(path):
    """The JSON at `path`, or None when there is no such file or it does not parse."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def size(path):
    """Bytes of a file, or of every file below a folder (a SavedModel)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def gzip_size(path):
    """Bytes of `path` gzip-compressed (level 9): the download size, which pruning's zeros shrink."""
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9))


class FolderLock:
    """An exclusive lock on a folder (`<folder>/.lock`) for as long as one process writes into it.

        with kseg.files.FolderLock("runs/a"):
            ...  # a second process (or a second lock in this one) gets a KsegError naming this process

    It is an advisory OS lock (`fcntl.flock`, `msvcrt.locking` on Windows) on the lock file, which the
    operating system drops when the process ends, however it ends: a lock left behind by a killed run
    is simply taken. The lock file holds the owner's host and process id, for the error message.
    """

    def __init__(self, folder, purpose="a run"):
        self.folder = folder
        self.path = os.path.join(folder, ".lock")
        self.purpose = purpose
        self._file = None

    def acquire(self):
        from kseg.errors import KsegError

        os.makedirs(self.folder, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115  (held open: the lock lives as long as the file)
        try:
            _lock(handle)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise KsegError(f"{self.folder} is in use by {owner} ({self.purpose}); wait for it to end, "
                            f"or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self):
        if self._file is not None:
            _unlock(self._file)
            self._file.close()
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


if os.name == "nt":
    import msvcrt

    def _lock(handle):
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(handle):
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(handle):
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(handle):
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
