"""Writing what a command produces without ever losing what was there before.

The rule every msjax output follows: nothing is deleted or replaced before its replacement
is complete. A new output is written under a temporary name beside its final place (same
folder, so the same file system) and renamed into place only when it is complete:

- `replace_folder(staged, final)`: a complete folder takes the place of `final` in one step
  (Linux `renameat2(RENAME_EXCHANGE)` swaps the two atomically; elsewhere two renames, and a
  run that dies between them gets the old folder back on its next call). Weights folders
  (`msjax.convert`, the trainer's best/ and final/) and prepared data sets use it.
- `staged_folder(final)`: a context manager around `replace_folder`: yields the temporary
  folder to write into, replaces `final` on success, removes the temporary folder on any
  failure (an exception, Ctrl-C).
- `Staging(out_dir)`: for a folder the user names and may share with other files
  (`msjax.evaluate --out`, `msjax.predict --out`): everything is written under
  OUT/.msjax-staging-<host>-<pid>/ and moved into OUT entry by entry (each rename atomic)
  only after the whole command succeeded. Other files in OUT are never touched.
- `write_text(path, text)`: one file, written beside and renamed over the old one.

`check_output_folder` is the check every command runs on its output arguments before any
work: a folder (or a folder that can be created), never a file, never an empty string.

Write failures (disk full, permissions) become `msjax.errors.OutputError` naming the path,
whatever library raised them: `storage_problem` finds a full disk or quota in an OSError,
in TensorStore's and TensorFlow's errors (RESOURCE_EXHAUSTED) and in the errors that wrap
them, and `short_reason` turns a library's error into one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import sys
from pathlib import Path

from msjax.errors import ConfigError, OutputError, UserError

STAGING_PREFIX = ".msjax-staging-"
_TMP, _OLD = ".msjax-tmp-", ".msjax-old-"
# How libraries that do their own I/O (TensorStore under Orbax, TensorFlow under TFDS) say
# that the disk or the quota is full: they raise their own types, not OSError.
_STORAGE_TEXT = {
    "No space left on device": "No space left on device",
    "os_error_code='28'": "No space left on device",
    "Disk quota exceeded": "Disk quota exceeded",
    "os_error_code='122'": "Disk quota exceeded",
}
_STORAGE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}


def _chain(error: BaseException):
    """The error and every error it was raised from or during."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def storage_problem(error: BaseException) -> str | None:
    """'No space left on device' (or the quota's) if a full disk caused `error`, else None."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[e.errno]
        text = str(e)
        for marker, problem in _STORAGE_TEXT.items():
            if marker in text:
                return problem
    return None


def short_reason(error: BaseException, limit: int = 300) -> str:
    """One line that says why a library call failed: a full disk as such, else the first
    line of its message without TensorStore's spec (kilobytes of JSON), shortened."""
    problem = storage_problem(error)
    if problem:
        return problem
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    text = text.split(" [tensorstore_spec=")[0].split(" [source locations=")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tag() -> str:
    """host-pid: names this process's temporary files (a shared file system has many hosts)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _alive(tag: str) -> bool:
    """Whether the process that named a temporary file may still be writing it."""
    host, _, pid = tag.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host's: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output_folder(path, argument: str) -> Path:
    """Checks, before any work, that `path` is (or can become) a folder this process can write.

    Args:
      path: the folder a command will write into.
      argument: how the user gave it (e.g. '--out', 'OUT_DIR'), for the message.

    Returns:
      The absolute path.

    Raises:
      ConfigError: an empty string, a file, a folder under a file, or no write permission.
    """
    if path is None or not str(path).strip():
        raise ConfigError(f"{argument} is empty: give the folder to write to.")
    out = Path(os.path.expanduser(str(path))).absolute()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{argument} {out} is a file, not a folder.")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{argument} {out} cannot be created: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{argument} {out}: no permission to write in {existing}.")
    return out


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swaps two paths atomically (Linux >= 3.15); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # file system without it
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def clean_stale(final: Path) -> None:
    """Removes temporary siblings of `final` left by dead processes; restores a lost `final`.

    A process killed between the two renames of the fallback swap leaves `final` missing
    and the complete old folder under its `.msjax-old-` name: it is put back.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return
    for sibling in final.parent.iterdir():
        name = sibling.name
        for marker in (_TMP, _OLD):
            prefix = final.name + marker
            if not name.startswith(prefix) or _alive(name[len(prefix) :]):
                continue
            if marker == _OLD and not final.exists():
                os.rename(sibling, final)
            elif sibling.is_dir():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def replace_folder(staged, final) -> None:
    """Puts the complete folder `staged` at `final`, replacing an older `final` in one step.

    Args:
      staged: a complete folder beside `final` (same file system).
      final: where it goes; an existing folder there is removed only once `staged` is in.
    """
    staged, final = Path(staged), Path(final)
    if not final.exists():
        os.rename(staged, final)
        return
    if _renameat2_exchange(staged, final):
        shutil.rmtree(staged)  # now the old folder
        return
    old = final.with_name(final.name + _OLD + _tag())
    os.rename(final, old)
    os.rename(staged, final)
    shutil.rmtree(old)


@contextlib.contextmanager
def staged_folder(final, what: str = "output"):
    """Yields a temporary folder beside `final`; on success it replaces `final`.

    On any failure (an exception or Ctrl-C) the temporary folder is removed and `final` is
    left exactly as it was. An OSError of the folder operations themselves (creating the
    temporary folder, the swap) becomes OutputError naming `final`; the caller reports
    errors of its own writes.

    Args:
      final: the folder to (re)place.
      what: what the folder is, for the message (e.g. 'weights folder').
    """
    final = Path(final).absolute()
    tmp = final.with_name(final.name + _TMP + _tag())
    with _as_output_error(final, what):
        clean_stale(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    try:
        try:
            yield tmp
        except Exception as e:
            problem = None if isinstance(e, UserError) else storage_problem(e)
            if problem is None:
                raise
            raise OutputError(
                f"Could not write the {what} {final}: {problem}. Anything at {final} before is "
                "intact; free space and run again."
            ) from e
        with _as_output_error(final, what):
            replace_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap


@contextlib.contextmanager
def _as_output_error(final: Path, what: str):
    """An OSError of msjax's own file operations on `final` -> OutputError naming it."""
    try:
        yield
    except OSError as e:
        raise OutputError(
            f"Could not write the {what} {final}: {e.strerror or e}. Anything at {final} "
            "before is intact."
        ) from e


def write_text(path, text: str) -> None:
    """Writes a whole file: beside it first, then renamed over the old one."""
    path = Path(path)
    tmp = path.with_name(path.name + _TMP + _tag())
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Could not write {path}: {e.strerror or e}.") from e


class Staging:
    """Writes a command's outputs under OUT/.msjax-staging-*, moved into OUT on success.

    Use as a context manager: write under `.path`; when the block succeeds, every top-level
    entry is moved into OUT, replacing the entry of that name (a folder as a whole, via
    `replace_folder`), or, with `merge=True`, every file is moved to its place under OUT,
    replacing only that file. When the block fails, OUT is untouched and the staging folder
    is removed.

    Args:
      out_dir: the output folder (created if needed).
      merge: merge folders file by file instead of replacing them.
    """

    def __init__(self, out_dir, merge: bool = False):
        self.out = Path(out_dir).absolute()
        self.merge = merge
        self.path = self.out / f"{STAGING_PREFIX}{_tag()}"

    def __enter__(self) -> Staging:
        self._created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(STAGING_PREFIX + "*"):
                if not _alive(stale.name[len(STAGING_PREFIX) :]):
                    shutil.rmtree(stale, ignore_errors=True)
            self.path.mkdir()
        except OSError as e:
            raise OutputError(f"Could not write to {self.out}: {e.strerror or e}.") from e
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._commit()
            except OSError as e:
                raise OutputError(f"Could not write to {self.out}: {e.strerror or e}.") from e
            finally:
                shutil.rmtree(self.path, ignore_errors=True)
            return
        shutil.rmtree(self.path, ignore_errors=True)
        if self._created:  # leave no empty folder behind a failed command
            with contextlib.suppress(OSError):
                self.out.rmdir()
        if isinstance(exc, OSError) and str(exc.filename or "").startswith(str(self.path)):
            # A write into the staging folder failed (disk full, quota): the user's problem.
            raise OutputError(
                f"Could not write to {self.out}: {exc.strerror or exc}. Nothing in it changed."
            ) from exc
        mine = isinstance(exc, UserError) or not isinstance(exc, Exception)
        problem = None if mine else storage_problem(exc)
        if problem:
            raise OutputError(
                f"Could not write to {self.out}: {problem}. Nothing in it changed."
            ) from exc

    def final(self, staged: Path) -> Path:
        """Where a path under the staging folder ends up under OUT."""
        return self.out / Path(staged).relative_to(self.path)

    def _commit(self) -> None:
        if self.merge:
            for staged in sorted(p for p in self.path.rglob("*") if not p.is_dir()):
                target = self.final(staged)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
            return
        for staged in sorted(self.path.iterdir()):
            target = self.final(staged)
            if staged.is_dir():
                if target.exists() and not target.is_dir():
                    raise OutputError(f"{target} is a file; msjax writes a folder there.")
                replace_folder(staged, target)
            else:
                os.replace(staged, target)
