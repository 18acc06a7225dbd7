"""Writing files so that a reader never sees half of one, and file-system errors as user errors.

A full disk, a missing permission, a read-only mount, or a file where a folder should be (and
the reverse) is something the user fixes, not a bug: :func:`writing` turns the ``OSError`` (or
the ``SafetensorError`` that safetensors raises for one) into a :class:`FileSystemError` that
names the path and what to do, printed as one line with exit code 2 like every user error.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks
    fcntl = None  # type: ignore[assignment]


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def publish_mode(path: Path) -> None:
    """Temp files and folders are created private (0600/0700, and safetensors writes 0600); what
    is renamed into place gets the permissions a plain open() or mkdir() would have given it."""
    umask = current_umask()
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666 & ~umask)


class FileSystemError(UserError):
    """The file system refused a read or write: no space, no permission, read-only, wrong kind."""


# errno -> (what happened, what to do)
_PROBLEMS = {
    errno.ENOSPC: ("no space left on the device", "free some space (or write elsewhere) and run the command again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space within your quota and run the command again"),
    errno.EACCES: ("permission denied", "fix the permissions, or choose a path you can write to"),
    errno.EPERM: ("operation not permitted", "fix the permissions, or choose a path you can write to"),
    errno.EROFS: ("read-only file system", "choose a path on a writable file system"),
    errno.ENOTDIR: ("a file is where a folder is expected", "move that file away or choose another path"),
    errno.EISDIR: ("a folder is where a file is expected", "give a file path, or move that folder away"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EEXIST: ("something is already there (a file where a folder is expected?)",
                   "move it away or choose another path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.EIO: ("input/output error from the device", "check the disk, then run the command again"),
}


def error_number(err: BaseException) -> int | None:
    """The errno of an OSError, or of the I/O error inside a SafetensorError ('(os error 28)')."""
    if isinstance(err, OSError):
        return err.errno
    if type(err).__name__ == "SafetensorError":
        found = re.search(r"os error (\d+)", str(err))
        if found:
            return int(found.group(1))
        if "No space left" in str(err):
            return errno.ENOSPC
    return None


def file_system_error(err: BaseException, path: str | Path | None = None) -> FileSystemError | None:
    """A one-line user error for ``err``, naming the file it names, else ``path``; None when
    ``err`` is not a file-system error."""
    number = error_number(err)
    if number is None:
        return None
    named = getattr(err, "filename", None) or path or "(unknown path)"
    what, todo = _PROBLEMS.get(number, (os.strerror(number).lower(), "check the path and the device"))
    if number in (errno.ENOENT, errno.ENOTDIR) and isinstance(err, OSError) and err.filename2:
        named = f"{named} -> {err.filename2}"
    return FileSystemError(f"{named}: {what}; {todo}.")


@contextmanager
def writing(path: str | Path | None) -> Iterator[None]:
    """File-system errors inside the block become a :class:`FileSystemError` naming ``path``
    (or the file the error names)."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  (only errno-bearing errors are converted)
        converted = file_system_error(err, path)
        if converted is None:
            raise
        raise converted from None


def atomic_write(path: Path, content: str | bytes) -> None:
    """Text is written as UTF-8, bytes as they are. A failed write leaves the old file as it was."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            publish_mode(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextmanager
def one_at_a_time(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (made if missing) for the block. Processes filling
    the same cache entry (the ranks of a run, or two runs) take turns, so the second finds the
    first's result instead of making it again, and waits on the lock rather than at a collective
    barrier with a timeout. Where there are no file locks (Windows, some network file systems)
    the block runs unguarded: every process does the work, and the rename that publishes it
    keeps each result whole."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:  # writable: network file systems lock through fcntl()
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                pass
        yield


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is swapped out only once ``src`` is complete.

    Leftovers of earlier kills (half-written temp folders, folders set aside) are removed once
    the new folder is in place.
    """
    publish_mode(src)
    aside = None
    if dst.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, aside / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        if aside is not None:  # put the old folder back: a failed replace changes nothing
            os.replace(aside / dst.name, dst)
        raise
    for leftover in list(dst.parent.glob(f".{dst.name}.old-*")) + list(dst.parent.glob(f".{dst.name}.tmp-*")):
        if leftover != src:
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_directory(directory: Path) -> Iterator[Path]:
    """Write a folder so that no reader ever sees half of it: yields a temporary folder beside
    ``directory``; when the block ends without error it replaces ``directory`` in one rename
    (an old one is set aside until then); on error it is removed and ``directory`` is as it was."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield tmp
        replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_format_version(found: object, supported: int, path: Path) -> None:
    """Files this version of nlp-mtl writes carry ``supported``; older ones still load, newer
    ones (from a later nlp-mtl, which may have changed what they mean) are refused."""
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise UserError(f"{path}: format_version {found!r} is not one nlp-mtl writes.")
    if found > supported:
        raise UserError(f"{path}: written by a newer nlp-mtl (format {found}; this one reads up to {supported}); "
                        "upgrade nlp-mtl to load it.")
