"""The console is the user's: what frameworks print for their own developers is kept off it.

    with kseg.console.quiet():
        flatbuffer = converter.convert()   # no "fully_quantize: 0, inference_type: 6 ..." on stderr

TensorFlow 2.21 writes C++ logs (CUDA probing at import, the LiteRT converter's settings) straight to
file descriptor 2, before or beside `TF_CPP_MIN_LOG_LEVEL`, and a few Python warnings through absl's
logger. `quiet` closes fd 2 and mutes those loggers for the duration; errors still surface as
exceptions, which carry their messages. `kseg --debug` leaves the console alone.
"""

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def quiet(loggers=("absl", "tensorflow")):
    """Silences fd 2 (C++ logs) and the named Python loggers below ERROR inside the block."""
    if os.environ.get("KSEG_DEBUG") == "1":  # set by `kseg --debug`: show everything
        yield
        return
    muted = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in muted:
        logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        for logger, level in muted:
            logger.setLevel(level)
