"""What a folder check found, kept between runs: the second start on an unchanged folder decodes nothing.

`kseg.data.check` decodes every image and mask of a folder once, to find bad files and count the classes:
seconds for 500 pairs, minutes for 100,000. Each good pair's result (size, grey or not, label histogram)
is stored under the pair's file sizes and modification times, so a pair whose files changed (or a new
pair) is checked again and the others are read back. The cache lives in `$KSEG_CACHE_DIR` (default
`~/.cache/kseg`), one JSON file per folder (and colour table), never in the user's data folder; a cache
that cannot be read or written is simply not used.
"""

import contextlib
import hashlib
import json
import os
import time

import numpy as np

from kseg import files

RECENT_NS = 2 * 10**9


def cache_dir():
    return os.environ.get("KSEG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kseg")


class FolderCheckCache:
    """{(image path, mask path): (size, grey, label counts)} of one folder, stamped by size and mtime."""

    VERSION = 1

    def __init__(self, root, colors=None, variant=None):
        self._prefix = os.path.join(root, "")  # pairs are paths below `root` as given
        root = os.path.abspath(root)
        key = [root, sorted((list(color), label) for color, label in (colors or {}).items())]
        key = json.dumps(key + [variant] if variant is not None else key)  # variant: an annotation format's reading
        self.path = os.path.join(cache_dir(), "folder-checks", hashlib.sha1(key.encode()).hexdigest() + ".json")
        stored = files.read_json(self.path)
        valid = isinstance(stored, dict) and stored.get("version") == self.VERSION and stored.get("root") == root
        self.root = root
        self._old = stored["pairs"] if valid else {}
        self._new = {}

    def get(self, pair):
        """(size (h, w), grey, counts (256,)) for an unchanged pair checked before, else None."""
        key, stamp = self._key(pair), _stamp(pair)
        entry = self._old.get(key)
        if stamp is None or entry is None or entry[0] != stamp:
            return None
        _, height, width, grey, labels, counts = entry
        histogram = np.zeros(256, np.int64)
        histogram[labels] = counts
        self._new[key] = entry
        return (height, width), grey, histogram

    def put(self, pair, size, grey, counts):
        stamp = _stamp(pair)
        # A file changed within the clock's tick could change again unseen with the same stamp: not kept.
        if stamp is not None and time.time_ns() - max(stamp[1::2]) > RECENT_NS:
            labels = np.flatnonzero(counts)
            self._new[self._key(pair)] = [stamp, size[0], size[1], bool(grey), labels.tolist(),
                                          counts[labels].tolist()]

    def save(self):
        """Keeps what this check saw (pairs gone from the folder are dropped); a no-op when nothing changed."""
        if self._new == self._old:
            return
        with contextlib.suppress(OSError):  # a read-only home: checks just stay uncached
            files.write_atomic(self.path, json.dumps({"version": self.VERSION, "root": self.root,
                                                      "pairs": self._new}).encode())

    def _key(self, pair):
        size = len(self._prefix)
        return "\0".join(path[size:] if path.startswith(self._prefix) else os.path.abspath(path) for path in pair)


def _stamp(pair):
    try:
        return [value for path in pair for stat in [os.stat(path)] for value in (stat.st_size, stat.st_mtime_ns)]
    except OSError:
        return None
