"""How trainguard opens files it did not write itself: regular files only, never blocking, and
writes never through a link.

A run folder, a log or a project file may have been replaced by anything: a FIFO (an open
would wait for a writer forever and freeze the tool), a device, a symbolic link to a file
elsewhere (a write would land outside the run folder), a hard link to someone's file. Every
read of such a file goes through `open_read`, every append through `open_append`; whole
files are replaced with `write_atomic` (a new file renamed over the old name, which never
writes into whatever the old name pointed at).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mcp_server.errors import InvalidInput

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


DISK_FULL_BYTES = 4 * 2**20  # less free than this: a write that failed, failed for want of space


class NotRegular(InvalidInput):
    """A path that names a link, a FIFO, a device or a folder where a regular file belongs."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _refuse(path: Path, what: str) -> NotRegular:
    return NotRegular(
        f"{path} is {what}, not a regular file; trainguard only opens regular files there. Remove or replace it."
    )


def _open(path: Path, flags: int, writing: bool, mode: int = 0o644) -> int:
    """os.open with O_NONBLOCK (a FIFO never blocks the call), then only a regular file is kept
    (and, to write, one with no other name); the fd is made blocking again for the caller."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | _CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "a symbolic link") from None
        if exc.errno == errno.EISDIR:
            raise _refuse(path, "a folder") from None
        if exc.errno == errno.ENXIO:  # a FIFO with no reader, opened to write; a socket
            raise _refuse(path, "a FIFO or a socket") from None
        raise
    fd = _checked(fd, path, writing)
    os.set_blocking(fd, True)
    return fd


def _checked(fd: int, path: Path, writing: bool) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(path, _kind(st.st_mode))
    if writing and st.st_nlink > 1:
        os.close(fd)
        raise _refuse(path, f"a hard link shared with {st.st_nlink - 1} other name(s)")
    return fd


def open_read(path: str | os.PathLike[str], *, follow_links: bool = True) -> BinaryIO:
    """Open a regular file for reading without ever blocking (a FIFO is refused, not waited on).

    Raises:
        FileNotFoundError: if it does not exist (callers treat that as "nothing yet").
        NotRegular: for a FIFO, device, socket or folder, and for a link when `follow_links` is False.
    """
    path = Path(path)
    return os.fdopen(_open(path, os.O_RDONLY | (0 if follow_links else _NOFOLLOW), writing=False), "rb")


def read_bytes(path: str | os.PathLike[str], *, follow_links: bool = True, limit: int | None = None) -> bytes:
    """The contents of a regular file (at most `limit` bytes), opened as `open_read` does."""
    with open_read(path, follow_links=follow_links) as fh:
        return fh.read() if limit is None else fh.read(limit)


def read_text(path: str | os.PathLike[str], *, follow_links: bool = True, what: str = "file") -> str:
    """A regular file as UTF-8 text.

    Raises:
        InvalidInput: if it is not UTF-8 (the message names the file and the byte).
    """
    data = read_bytes(path, follow_links=follow_links)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{what} {path} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); save it as UTF-8."
        ) from None


def open_append(path: str | os.PathLike[str], mode: int = 0o644) -> BinaryIO:
    """Open (creating it if needed) a regular file to append to; never through a link of any kind.

    Raises:
        NotRegular: if the name is a symbolic link, a hard link, a FIFO, a device or a folder.
    """
    path = Path(path)
    return os.fdopen(_open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, writing=True, mode=mode), "ab")


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data`: a temp file in the same folder, fsynced, renamed over it.

    The rename replaces the name itself, so a link left at `path` is replaced, never written
    through; readers see the old file or the new one, never half of one. The folder must be a
    real folder (not a link), which callers check once for the run folder.
    """
    path = Path(path)
    if path.parent.is_symlink():
        raise _refuse(path.parent, "a symbolic link")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_regular(path: str | os.PathLike[str]) -> bool:
    """True if `path` itself (not a link's target) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def disk_full(path: Path) -> str | None:
    """'disk full on <path>: N MiB free' when the filesystem of `path` has (almost) no space or inodes left."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < DISK_FULL_BYTES:
        return f"disk full on {path}: {free / 2**20:.1f} MiB free"
    if st.f_files and st.f_favail == 0:
        return f"disk full on {path}: no inodes (files) left, {free / 2**20:.0f} MiB free"
    return None


def walk(folder: Path, max_depth: int, max_files: int, read: list[Path] | None = None) -> Iterator[Path]:
    """Regular files under `folder`, breadth first, in name order, at most `max_depth` folders
    down and `max_files` files in all; never through a link, skipping dot-names. `read`, when
    given, gets each folder whose entries were read."""
    level, seen = [folder], 0
    for _ in range(max_depth + 1):
        below: list[Path] = []
        for current in level:
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError:
                continue
            if read is not None:
                read.append(current)
            for entry in entries:
                if entry.name.startswith(".") or entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    seen += 1
                    if seen > max_files:
                        return
                    yield Path(entry.path)
        level = below
