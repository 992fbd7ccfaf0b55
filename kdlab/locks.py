"""Run-folder locks: one kdlab process at a time writes a given output folder.

A lock is an advisory ``fcntl.flock`` on the file ``.<name>.kdlab-lock`` beside the folder ``<name>`` (beside, not
inside, so that it works for a folder that does not exist yet and for outputs that are renamed into place), keyed on
the folder's resolved path, so a symbolic link or another spelling of the same folder meets the same lock. The
holder writes ``host pid`` into it and removes it when done. A second process that finds the lock held either
stops with a :class:`KdlabError` naming the holder's host and PID (:func:`folder_lock`, ``wait=False``) or waits
for it (``wait=True``: teacher-cache builds, where the second process then reuses what the first built). The kernel
releases a flock when its holder dies, so a lock left by a killed process (the file still names it) is simply
taken over, with a message. Locks are re-entrant within one process. Under ``torchrun`` / ``accelerate launch``
only the main process (``RANK`` 0) takes run locks (:func:`is_main_rank`). flock is advisory and local: on a
network file system shared by several machines it may not exclude a process on another machine.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from kdlab.errors import KdlabError

_HELD: dict[str, list] = {}  # lock file (absolute) -> [fd, depth]


def lock_file(folder: str | Path) -> Path:
    """The lock file of ``folder``: ``<parent>/.<name>.kdlab-lock`` of the folder's resolved path.

    Resolved (``os.path.realpath``: symbolic links followed as far as the path exists, ``..`` and relative parts
    made absolute), so every spelling of one folder — through a link to it or to a parent, ``a/../b`` — meets the
    same lock file, whether the folder exists yet or not.
    """
    folder = Path(os.path.realpath(folder))
    return folder.parent / f".{folder.name}.kdlab-lock"


def is_main_rank() -> bool:
    """True outside distributed launches and on the process of global rank 0 (``RANK``)."""
    return os.environ.get("RANK", "0") == "0"


def _holder(path: Path) -> tuple[str, int] | None:
    """(host, pid) written in a lock file, or None when it is empty or unreadable."""
    try:
        host, pid = path.read_text().split()[:2]
        return host, int(pid)
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True while a process with this PID exists on this machine (signal 0 probe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: tuple[str, int] | None) -> str:
    return f"PID {holder[1]} on host {holder[0]}" if holder else "another process"


def _open_locked(path: Path, folder: Path, wait: bool, what: str) -> int:
    """Open ``path`` and take its flock; retry when the file was replaced meanwhile (its holder removed it)."""
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise KdlabError(f"{folder}: cannot create the lock file {path} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _holder(path)
            if not wait:
                os.close(fd)
                raise KdlabError(
                    f"{folder}: in use by {_describe(holder)} ({what}; lock {path}); wait for it to finish "
                    "or choose another output folder"
                ) from None
            if not announced:
                print(f"kdlab: {folder}: waiting for {_describe(holder)} ({what})", file=sys.stderr, flush=True)
                announced = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
        time.sleep(0.01)


@contextmanager
def folder_lock(folder: str | Path, what: str = "a kdlab run", wait: bool = False) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the duration of the block (see the module docstring).

    ``wait=False``: a held lock is a :class:`KdlabError` "``folder``: in use by PID N on host H"; ``wait=True``:
    block until the holder is done. A lock file naming a process that no longer runs (killed) is taken over with a
    message on stderr. Yields the lock file path.
    """
    path = lock_file(folder)
    key = str(path)
    if key in _HELD:  # re-entrant within this process
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path, Path(folder), wait, what)
    previous = _holder(path)
    host = socket.gethostname()
    if previous and previous != (host, os.getpid()) and not (previous[0] == host and pid_alive(previous[1])):
        print(
            f"kdlab: {folder}: taking over the lock left by PID {previous[1]} on host {previous[0]} "
            "(no longer running)",
            file=sys.stderr,
            flush=True,
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{host} {os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        with suppress(OSError):
            path.unlink()
        os.close(fd)


@contextmanager
def main_rank_lock(folder: str | Path, what: str = "a kdlab run") -> Iterator[None]:
    """:func:`folder_lock` on the main process of a distributed launch; nothing on the other ranks."""
    if not is_main_rank():
        yield
        return
    with folder_lock(folder, what):
        yield
