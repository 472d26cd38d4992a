"""Exclusive OS file locks, polled with a timeout.

The OS drops a lock when its holder dies, so a killed download or install never blocks the next one."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

from mednextv2.errors import ResourceError

log = logging.getLogger(__name__)


class FileLock:
    """An exclusive OS lock on a file, polled until `timeout` seconds have passed.

    The OS drops the lock when the holder dies, so a killed download never blocks the next."""

    def __init__(self, path: Path, timeout: float = 3600.0, poll: float = 0.1) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.poll = poll
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        announced = False
        while True:
            if _try_lock(fd):
                self._fd = fd
                return
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ResourceError(f"another mednextv2 process holds {self.path} for more than {self.timeout:.0f} s; "
                                    "wait for it to finish or stop it")
            if not announced:
                log.info("waiting for another mednextv2 process (lock %s)", self.path)
                announced = True
            time.sleep(self.poll)

    def release(self) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
