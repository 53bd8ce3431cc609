"""One command at a time per folder: an advisory lock file in the folder it writes.

Two commands writing one folder at once corrupt it quietly (two trainers append every
metrics line twice and race for the same checkpoint step). So every command that writes a
folder holds `FOLDER/.msjax-lock` while it works: the training run's workdir, the chain
folder of `msjax.demo`, `msjax.study` and `msjax.reproduce`, the `--out` of
`msjax.evaluate` and `msjax.predict`, and each data set config `msjax.prepare` builds
(DATA/<dataset>/<config>). A second command on a held folder stops at once, naming the
process, host and start time of the one that holds it.

How the lock works:
- The file is created (or opened) and locked with `fcntl.flock`; the kernel releases that
  lock when the process ends, however it ends (an exception, a signal, SIGKILL). The file
  holds the holder's pid, host, start time and command line, for the messages.
- Released normally, the file is removed. A file left behind by a process that died
  (SIGKILL, power loss) names a process that no longer holds the lock: the next command on
  this host takes it over and says so in one line.
- A file that names another host cannot be checked from here (the lock may not be shared
  between hosts on a network file system): it is refused, and the message says which file
  to remove once nothing runs there.
- On a file system without `flock` (some cluster file systems), the file's pid decides:
  a live process on this host holds it, a dead one does not.

In a multi-process job only process 0 takes a run's lock (the processes of one job share
the folder); its outcome is shared with the others, so a refused job stops on every
process with the same message instead of leaving its peers waiting in a collective.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from msjax.errors import WorkdirError

LOCK_FILE = ".msjax-lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderInUse(WorkdirError):
    """Another live process holds the folder's lock (`holder` says which)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def _describe(holder: dict) -> str:
    """'process 123 on host h since 2026-12-01 15:49:02 (python -m msjax.train ...)'."""
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    command = f" ({holder['command']})" if holder.get("command") else ""
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    return f"process {pid} on host {host} since {when}{command}"


def _alive(pid) -> bool:
    """Whether a process of this host with that pid exists."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _command_line() -> str:
    """This process's command line as the user typed it (`python -m msjax.X ...`), short."""
    if not sys.argv:
        return ""
    program = Path(sys.argv[0])
    if program.parent.name == "msjax" and program.suffix == ".py":  # python -m msjax.NAME
        head = f"python -m msjax.{program.stem}"
    else:
        head = program.name
    return " ".join([head, *sys.argv[1:]])[:300]


class FolderLock:
    """The lock of one folder; `acquire()` takes it or raises, `release()` gives it back.

    Args:
      folder: the folder to lock (created if missing; what this lock created is removed
        again on release, as far as it is still empty).
      what: how messages name the folder (e.g. '--workdir', '--out').
    """

    def __init__(self, folder, what: str = "folder"):
        self.folder = Path(os.path.expanduser(os.fspath(folder))).absolute()
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock created, deepest first
        self.note: str | None = None  # set when a stale lock was taken over

    def _in_use(self, holder: dict) -> WorkdirError:
        return FolderInUse(
            f"{self.what} {self.folder} is in use by {_describe(holder)}: one msjax command "
            "at a time may write it. Wait for that one to finish (or stop it), or use "
            "another folder.",
            _describe(holder),
        )

    def _open(self) -> tuple[int, bool]:
        """(fd, created): the lock file opened for reading and writing."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            return os.open(self.path, os.O_RDWR), False

    def acquire(self) -> FolderLock:
        """Takes the lock, or raises WorkdirError naming who holds it (or saying that the
        folder cannot be written)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise WorkdirError(f"{self.what} {self.folder} is a file, not a folder.")
        try:
            missing = self.folder
            while not missing.exists():
                self._created.append(missing)
                missing = missing.parent
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(20):  # a holder may remove the file between our open and lock
                with contextlib.suppress(FileNotFoundError):
                    if self._try_take():
                        return self
        except OSError as e:
            self._undo_folder()
            raise WorkdirError(f"{self.what} {self.folder} is not writable: {e}") from None
        except BaseException:
            self._undo_folder()
            raise
        raise self._in_use({})

    def _try_take(self) -> bool:
        """One attempt; True once this process holds the lock."""
        fd, created = self._open()
        try:
            flocked = self._flock(fd)
            if flocked is False:
                raise self._in_use(_read(fd))
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                os.close(fd)  # the file we locked was removed meanwhile: try again
                return False
            holder = {} if created else _read(fd)
            if holder:
                self._check_stale(holder, flocked)
            mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                    "command": _command_line()}  # fmt: skip
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(mine) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: locked; False: another open file holds it; None: not supported here."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return None
            raise
        return True

    def _check_stale(self, holder: dict, flocked: bool | None) -> None:
        """Raises unless the holder recorded in the file is gone; sets `note` if it is."""
        if holder.get("host") != socket.gethostname():
            raise WorkdirError(
                f"{self.what} {self.folder} is in use by {_describe(holder)}, or was, if that "
                "process was killed: msjax cannot check a process of another host. Once "
                f"nothing of msjax runs there on this folder, delete {self.path} and run "
                "again."
            )
        if flocked is None and _alive(holder.get("pid")):
            raise self._in_use(holder)
        self.note = (
            f"note: {self.path} was left by {_describe(holder)}, which is no longer "
            "running; taking it over."
        )

    def release(self) -> None:
        """Removes the lock file (if still this lock's) and unlocks; idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    os.unlink(self.path)
        finally:
            os.close(fd)
        self._undo_folder()

    def _undo_folder(self) -> None:
        """Removes the folders this lock created, as long as they are empty."""
        created, self._created = self._created, []
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                return


def _acquire(lock: FolderLock, wait_s: float) -> None:
    """Takes the lock, waiting up to `wait_s` seconds while another process holds it."""
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            lock.acquire()
            return
        except FolderInUse as e:
            if time.monotonic() >= deadline:
                raise
            if not told:
                print(f"{lock.folder} is in use by {e.holder}; waiting for it to finish "
                      f"(at most {wait_s / 60:.0f} min).", file=sys.stderr, flush=True)  # fmt: skip
                told = True
            time.sleep(1.0)


@contextlib.contextmanager
def hold(folder, what: str = "folder", *, collective: bool = False, wait_s: float = 0.0):
    """Holds FOLDER's lock for the block (see the module doc); yields the FolderLock.

    Args:
      folder: the folder the block writes.
      what: how messages name it ('--workdir', '--out', ...).
      collective: the block runs on every process of a multi-process job: process 0 takes
        the lock and every process learns whether it did.
      wait_s: while another process holds the lock, wait for it this long (saying so once)
        instead of refusing at once.
    """
    lock = FolderLock(folder, what)
    failure = None
    if process_index(collective) == 0:
        try:
            _acquire(lock, wait_s)
        except WorkdirError as e:
            failure = e
    failure = _shared_outcome(failure, collective)
    if failure is not None:
        raise failure
    if lock.note:
        print(lock.note, file=sys.stderr, flush=True)
    try:
        yield lock
    finally:
        lock.release()


def process_index(collective: bool) -> int:
    """This process's index in a multi-process job (0 when not collective or alone)."""
    if not collective or not _multi_process():
        return 0
    import jax

    return jax.process_index()


def _multi_process() -> bool:
    """Whether this process is part of a multi-process JAX job (without starting JAX)."""
    if "jax" not in sys.modules:
        return False
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def _shared_outcome(failure, collective: bool):
    """Process 0's failure (or None) on every process of a multi-process job."""
    if not collective or not _multi_process():
        return failure
    import numpy as np
    from jax.experimental import multihost_utils

    refused = multihost_utils.broadcast_one_to_all(np.int32(failure is not None))
    if failure is None and int(refused):
        return WorkdirError(
            "process 0 of this job could not lock the run's folder (its message says why); "
            "this process stops with it."
        )
    return failure
