"""One job per output directory: a lock file that names its holder, and stale locks taken over.

A job (generate, train, infer) that writes into a directory holds `<dir>/.physdiff.lock` while it
runs. A second job into the same directory is refused with one line naming the holder (pid,
host, command, start time). A lock whose process no longer exists on this host (a killed job) is
stale and is taken over; a lock from another host is respected, since its process cannot be
checked from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from physdiff.checks import UsageError

__all__ = ["LOCK_NAME", "hold"]

LOCK_NAME = ".physdiff.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # half-written or unreadable: treated as stale


@contextlib.contextmanager
def hold(directory: Path, job: str, key: str = "") -> Iterator[Path]:
    """Hold the lock of `directory` (created if needed) for the duration of the block; jobs
    that may share a directory on purpose (shards of one generation) pass distinct `key`s.

    Raises UsageError (one line) if another live job holds it, or if the directory cannot be
    created or written (checked here, before the job does any work)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {directory}: cannot create the output directory "
                         f"({err.strerror or err})") from None
    path = directory / (LOCK_NAME if not key else f"{LOCK_NAME}.{key.replace('/', '-')}")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "job": job,
          "command": " ".join(sys.argv)[:200], "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _holder(path)
            live = (other is not None and (other.get("host") != me["host"]
                                           or _alive(int(other.get("pid", -1)))))
            if live:
                raise UsageError(
                    f"--out {directory}: in use by {other.get('job')} (pid {other.get('pid')} "
                    f"on {other.get('host')}, since {other.get('since')}: "
                    f"{other.get('command')}); wait for it or use another --out") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as err:
            raise UsageError(f"--out {directory}: not writable ({err.strerror or err})") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        break
    else:
        raise UsageError(f"--out {directory}: could not take over the lock {path}")
    try:
        yield path
    finally:
        if _holder(path) == me:
            path.unlink(missing_ok=True)
