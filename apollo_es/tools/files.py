"""The file tools' access to the workspace: every open resolved by the kernel beneath its root.

The file tools run in the agent's own process, on the host, while sandboxed commands may be
changing the same tree. Checking a path and then opening it is a race a command can win (swap
a directory for a symlink in between). So every path is opened with `openat2(2)` and
`RESOLVE_BENEATH` relative to a descriptor of the root: the kernel follows symlinks only while
they stay below it and fails the open otherwise, atomically. What was opened is then checked on
the descriptor itself: only regular files are read or written (a FIFO would block the agent
forever, a device or socket is nothing to read), and never a file with a second hard link,
whose other name may be outside the workspace.

Needs Linux 5.6 or later (openat2).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apollo_es.tools.observation import read_bounded
from apollo_es.tools.specs import ToolError

__all__ = ["Root"]

_SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall tables were unified)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_SKIP_DIRS = frozenset({".git", "__pycache__"})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(2) beneath `dir_fd`; `mode` only with O_CREAT (the kernel refuses it otherwise)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    while True:
        fd = _libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):  # EAGAIN: a rename raced the lookup; retry
            raise OSError(err, os.strerror(err), path)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def _tool_error(rel: str, exc: OSError) -> Exception:
    messages = {
        errno.EXDEV: f"Path {rel!r} is outside the workspace (through a symlink)",
        errno.ENOENT: f"No such file or directory: {rel!r}",
        errno.ENOTDIR: f"A parent of {rel!r} is not a directory",
        errno.EISDIR: f"{rel!r} is a directory",
        errno.ELOOP: f"Too many levels of symlinks in {rel!r}",
        errno.ENXIO: f"{rel!r} is a FIFO or a socket; the file tools only work on regular files",
    }
    return ToolError(messages[exc.errno]) if exc.errno in messages else exc


class Root:
    """The workspace directory, for file tools. Paths are relative to it; `aliases` are the
    absolute names it also goes by (its host path, and /workspace inside the sandbox)."""

    def __init__(self, path: Path, aliases: tuple[str, ...]) -> None:
        self.path = path
        self.aliases = aliases

    def relative(self, path: str) -> str:
        """`path` as a normalized path relative to the root; ToolError if it leads outside."""
        if os.path.isabs(path):
            alias = next((a for a in self.aliases if path == a or path.startswith(a.rstrip("/") + "/")), None)
            if alias is None:
                raise ToolError(f"Path {path!r} is outside the workspace")
            path = path[len(alias) :].lstrip("/")
        rel = os.path.normpath(path or ".")
        if rel == ".." or rel.startswith("../"):
            raise ToolError(f"Path {path!r} is outside the workspace")
        return rel

    @contextmanager
    def _fd(self, rel: str, flags: int, mode: int = 0) -> Iterator[int]:
        root = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = _openat2(root, rel, flags, mode)
        except OSError as exc:
            raise _tool_error(rel, exc) from exc
        finally:
            os.close(root)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def open_file(self, rel: str, *, write: bool = False) -> Iterator[int]:
        """A descriptor of the regular file `rel`: for reading, or for writing (created if missing,
        not yet truncated). O_NONBLOCK, so opening a FIFO cannot hang us before fstat refuses it."""
        flags = (os.O_WRONLY | os.O_CREAT if write else os.O_RDONLY) | os.O_NONBLOCK | os.O_NOCTTY
        with self._fd(rel, flags, 0o644 if write else 0) as fd:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ToolError(f"{rel!r} is a directory" + ("" if write else "; use list_files"))
            if not stat.S_ISREG(st.st_mode):
                raise ToolError(f"{rel!r} is {_kind(st.st_mode)}; the file tools only work on regular files")
            if st.st_nlink > 1:
                raise ToolError(f"{rel!r} has {st.st_nlink} hard links; the file tools refuse files that may also live outside the workspace")
            yield fd

    def stat(self, rel: str) -> os.stat_result:
        """The status of an existing path, symlinks followed beneath the root."""
        with self._fd(rel, os.O_PATH) as fd:
            return os.fstat(fd)

    def read_bytes(self, rel: str) -> bytes:
        """A whole regular file."""
        with self.open_file(rel) as fd, open(fd, "rb", closefd=False) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        """A regular file decoded leniently; past MAX_READ_BYTES only its head and tail."""
        with self.open_file(rel) as fd, open(fd, "rb", closefd=False) as f:
            return read_bounded(f)

    def write_text(self, rel: str, content: str) -> None:
        """Write a whole file, creating its parent directories beneath the root."""
        parent = os.path.dirname(rel)
        if parent:
            self._make_dirs(parent)
        data = content.encode()
        with self.open_file(rel, write=True) as fd:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

    def _make_dirs(self, rel: str) -> None:
        """mkdir -p, one level at a time, each parent opened beneath the root."""
        done = "."
        for part in rel.split("/"):
            with self._fd(done, os.O_PATH | os.O_DIRECTORY) as parent:
                try:
                    os.mkdir(part, dir_fd=parent)
                except FileExistsError:
                    pass  # a directory, or something the next open judges
            done = os.path.join(done, part)

    def walk(self, rel: str) -> Iterator[tuple[str, str, os.stat_result]]:
        """(path relative to the root, name, lstat) of every entry below directory `rel`, sorted,
        without following symlinks and skipping .git and __pycache__."""
        with self._fd(rel, os.O_RDONLY | os.O_DIRECTORY) as top:
            for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
                base = os.path.normpath(os.path.join(rel, dirpath))
                for name in sorted(dirnames + filenames):
                    yield os.path.normpath(os.path.join(base, name)), name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def readlink(self, rel: str) -> str:
        parent, name = os.path.split(rel)
        with self._fd(parent or ".", os.O_PATH | os.O_DIRECTORY) as fd:
            return os.readlink(name, dir_fd=fd)
