"""Keep the engine running when whoever reads its stdout/stderr goes away.

The Slicer modules read the engine's output through pipes. When Slicer exits during training it
writes the stop file and its ends of the pipes close; the next progress line or log record would
then raise BrokenPipeError (EINVAL on Windows) and end the run before the stop request is seen
and the checkpoint is written. `tolerate_lost_reader()` wraps stdout and stderr so that the
first failed write sends that stream to the null device instead: the engine goes on, stops at
the stop file with its checkpoint, and `--resume` continues. Called by `cli.main` only.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import TextIO

# A closed pipe: EPIPE on POSIX (SIGPIPE is ignored by Python), EINVAL from Windows' CRT.
_LOST_READER = (errno.EPIPE, errno.EINVAL)


class ReaderTolerantStream:
    """A text stream whose writes never fail because the reader has gone."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_lost = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as e:
            self._lose(e)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as e:
            self._lose(e)

    def _lose(self, error: Exception) -> None:
        if isinstance(error, OSError) and error.errno not in _LOST_READER:
            raise error  # a full disk or another real failure is not ours to hide
        if isinstance(error, ValueError) and not getattr(self._stream, "closed", False):
            raise error
        self.reader_lost = True
        # The null device behind the same descriptor: what is still buffered, and every later write,
        # goes nowhere, also the interpreter's own flush at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
            self._stream.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def tolerate_lost_reader() -> None:
    """Wrap sys.stdout and sys.stderr (once) before logging and progress reporting start."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ReaderTolerantStream):
            setattr(sys, name, ReaderTolerantStream(stream))
