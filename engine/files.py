"""Every file Loom writes goes through here, so that no file is ever lost or half-written.

The data goes to a temporary file beside the target, named `.loom-tmp-<pid>-<random>-<name>`,
is flushed and fsync'ed, and only then appears under its final name:

- `write_atomic(path, data)` replaces a file (workflows, recovery files, masks, "Save As"): the
  temp file is moved over the old one with `os.replace`, so a reader sees the old file or the
  new one, never a mix. A symlink at `path` is followed: its target is replaced and the link
  stays. The old file's mode is kept.
- `write_numbered(folder, prefix, suffix, data)` adds a new file `prefix_NNNNN<suffix>` (Save
  Image, Save Text) and never replaces anything. The unique name is claimed atomically *with the
  complete file*: `os.link(temp, final)` fails with EEXIST when the name is taken (by a file, a
  folder or a symlink -- a symlink is never written through), and then the next number is tried;
  the temp name is unlinked afterwards. Where a file system has no hard links (FAT, exFAT, some
  network and FUSE mounts) the same claim is made with `renameat2(RENAME_NOREPLACE)` (Linux) or
  `renamex_np(RENAME_EXCL)` (macOS), or with `os.rename` on Windows (which refuses an existing
  target). Only where none of those exist does it fall back to a check-then-rename held under an
  exclusive `flock` on the folder: atomic among Loom writers on this machine, though a foreign
  program could still race it. Creating the final name first with O_EXCL and filling it later
  was rejected: it shows a 0-byte file under the final name while the data is written, and
  leaves one behind when the process is killed.

New files get the mode a plain `open()` would give (0o666 & ~umask): the temp file is created
with mode 0o666 and the kernel applies the umask, so the umask is never read or changed (reading
it means setting it, which races other threads).

A writer killed with SIGKILL leaves at most its temp file. `clean_stale_temp_files(folder)`
removes Loom temp files whose writer process is gone (or which are older than STALE_AFTER_S);
it runs when the CLI and the editor start, before the first write into a folder, and on every
numbered write (whose folder scan sees the entries anyway). Files not named like Loom's own
temp files are never touched.

A write that fails midway (disk full, file-size limit, I/O error) removes its temp file and
raises `FileWriteError` (an OSError and a LoomError) naming the file and what happened; nothing
appears under the final name and an old file is left as it was.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import sys
import threading
import time
from pathlib import Path

from engine.errors import LoomError

TEMP_PREFIX = ".loom-tmp-"
STALE_AFTER_S = 30 * 60
"""A Loom temp file this old is stale even if a process with its writer's pid is alive (the
pid may have been reused, or the writer may live on another machine sharing the folder)."""

_TEMP_RE = re.compile(r"^\.loom-tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})-")
_NAME_MAX = 255  # bytes in one path component on every file system Loom writes to

_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file is larger than this system allows (a file-size limit)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
}
if hasattr(errno, "EDQUOT"):
    _HINTS[errno.EDQUOT] = "the disk quota is exhausted"


class FileWriteError(LoomError, OSError):
    """A file could not be written; nothing was left under its name (an old file is kept)."""

    def __init__(self, path: str | os.PathLike, exc: BaseException, replacing: bool = False):
        code = getattr(exc, "errno", None)
        strerror = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        super().__init__(code, strerror, str(path))
        hint = _HINTS.get(code) if code is not None else None
        kept = ("the old file is unchanged" if replacing
                else "nothing was written under that name")
        self.message = (f"could not write {path}: {strerror}"
                        + (f" ({hint})" if hint and hint.lower() != strerror.lower() else "")
                        + f"; {kept}")

    def __str__(self) -> str:
        return self.message


# names ------------------------------------------------------------------------------------------


def check_prefix(prefix: str) -> str | None:
    """Why `prefix` could not be a plain file-name prefix inside the output folder, or None."""
    if not isinstance(prefix, str) or not prefix or not prefix.strip():
        return "must not be empty"
    if prefix in (".", "..") or ".." in prefix:
        return f"{prefix!r} must not contain '..'"
    if "/" in prefix or "\\" in prefix or os.path.isabs(prefix) or Path(prefix).name != prefix:
        return f"{prefix!r} must be a plain file-name prefix, without folders"
    if any(c in prefix for c in '\0:*?"<>|') or any(ord(c) < 32 for c in prefix):
        return f"{prefix!r} contains characters not allowed in file names"
    if prefix.startswith(TEMP_PREFIX):
        return f"{prefix!r} starts like Loom's temporary files ({TEMP_PREFIX})"
    return None


def temp_name(final_name: str) -> str:
    """A fresh temp-file name for `final_name`: recognisable, unique, at most 255 bytes."""
    head = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
    room = _NAME_MAX - len(head.encode())
    tail = os.fsencode(final_name)[:room].decode(sys.getfilesystemencoding(), "ignore")
    return head + tail


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


# stale temp files ---------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid >= 2**31:
        return True  # not a pid Loom wrote: leave it to the age rule
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: use the age rule only
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _is_stale(folder: str, name: str, now: float) -> bool:
    m = _TEMP_RE.match(name)
    if m is None:
        return False
    try:
        st = os.lstat(os.path.join(folder, name))
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False  # Loom only ever makes regular temp files
    if now - st.st_mtime > STALE_AFTER_S:
        return True
    pid = int(m.group("pid"))
    return pid != os.getpid() and not _pid_alive(pid)


def clean_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove Loom temp files in `folder` whose writer is gone; returns what was removed.
    A missing or unreadable folder is not an error."""
    folder = os.fspath(folder)
    try:
        names = os.listdir(folder)
    except (OSError, ValueError):  # ValueError: a NUL or a lone surrogate in the name
        return []
    removed = []
    now = time.time()
    for name in names:
        if name.startswith(TEMP_PREFIX) and _is_stale(folder, name, now):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(Path(folder) / name)
            except OSError:
                pass
    with _cleaned_lock:
        _cleaned.add(_folder_key(folder))
    return removed


_cleaned: set[str] = set()
_cleaned_lock = threading.Lock()


def _folder_key(folder: str) -> str:
    return os.path.normcase(os.path.abspath(folder))


def _clean_once(folder: str) -> None:
    with _cleaned_lock:
        if _folder_key(folder) in _cleaned:
            return
    clean_stale_temp_files(folder)


# writing ------------------------------------------------------------------------------------


def _as_bytes(data: bytes | bytearray | memoryview | str) -> memoryview:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return memoryview(data).cast("B")


_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _write_temp(folder: str, final_name: str, data: memoryview, mode: int | None,
                report_as: str | os.PathLike, replacing: bool) -> str:
    """Write `data` to a new temp file in `folder`, fsync it, close it; return its path.
    On any failure the temp file is removed and FileWriteError raised."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY
    while True:
        tmp = os.path.join(folder, temp_name(final_name))
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask, like open()
        except FileExistsError:
            continue  # a 32-bit random clash: draw again
        except OSError as exc:
            raise FileWriteError(report_as, exc, replacing) from exc
        break
    try:
        try:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            view = data
            while view:
                n = os.write(fd, view[:1 << 24])
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            raise FileWriteError(report_as, exc, replacing) from exc
        raise
    return tmp


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: str) -> None:
    """Make the new directory entry durable (POSIX); a no-op where folders cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Replace (or create) the file at `path` with `data` atomically; returns the file written.
    A symlink is followed: its target gets the data and the link stays. The old file's mode is
    kept; a new file gets 0o666 & ~umask."""
    p = os.fspath(path)
    if os.path.islink(p):
        p = os.path.realpath(p)
    folder = os.path.dirname(p) or "."
    view = _as_bytes(data)
    try:
        mode: int | None = os.stat(p).st_mode & 0o7777
    except OSError:
        mode = None
    _clean_once(folder)
    tmp = _write_temp(folder, os.path.basename(p), view, mode, path, replacing=mode is not None)
    try:
        os.replace(tmp, p)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            raise FileWriteError(path, exc, replacing=mode is not None) from exc
        raise
    _fsync_dir(folder)
    return Path(p)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, text.encode("utf-8"))


def _numbered_re(prefix: str, suffix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + r"_(\d{5,})" + re.escape(suffix) + r"\Z")


def next_number(folder: str | os.PathLike, prefix: str, suffix: str) -> int:
    """1 + the highest N of the `prefix_NNNNN<suffix>` names in `folder` (1 if none); removes
    stale Loom temp files met on the way."""
    folder = os.fspath(folder)
    pattern = _numbered_re(prefix, suffix)
    highest = 0
    now = time.time()
    for name in os.listdir(folder):
        m = pattern.match(name)
        if m:
            highest = max(highest, int(m.group(1)))
        elif name.startswith(TEMP_PREFIX) and _is_stale(folder, name, now):
            _unlink_quietly(os.path.join(folder, name))
    return highest + 1


def write_numbered(folder: str | os.PathLike, prefix: str, suffix: str,
                   data: bytes | str) -> Path:
    """Write `data` as a new file `prefix_NNNNN<suffix>` in `folder`, numbered after the highest
    existing one; never replaces or writes through anything (see the module docstring)."""
    why = check_prefix(prefix)
    if why is not None:
        raise ValueError(f"file name prefix {why}")
    folder = os.fspath(folder)
    view = _as_bytes(data)
    try:
        os.makedirs(folder, exist_ok=True)
        n = next_number(folder, prefix, suffix)
    except OSError as exc:
        raise FileWriteError(os.path.join(folder, f"{prefix}_NNNNN{suffix}"), exc) from exc
    first = os.path.join(folder, f"{prefix}_{n:05d}{suffix}")
    tmp = _write_temp(folder, os.path.basename(first), view, None, first, replacing=False)
    try:
        for attempt in range(1_000_000):
            final = os.path.join(folder, f"{prefix}_{n + attempt:05d}{suffix}")
            try:
                claimed = _claim(tmp, final)
            except FileExistsError:
                continue
            except OSError as exc:
                raise FileWriteError(final, exc) from exc
            if claimed == "link":
                _unlink_quietly(tmp)
            _fsync_dir(folder)
            return Path(final)
        raise FileWriteError(first, OSError(errno.EEXIST, "no free number for this prefix"))
    finally:
        if os.path.lexists(tmp):
            _unlink_quietly(tmp)


# claiming a new name atomically ---------------------------------------------------------------

_NO_LINKS = {errno.EPERM, errno.ENOSYS, errno.EXDEV, errno.EMLINK,
             getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOTSUP", -1)}
_NO_NOREPLACE = {errno.EINVAL, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", -1),
                 getattr(errno, "ENOTSUP", -1)}


def _claim(tmp: str, final: str) -> str:
    """Make the complete file `tmp` appear as `final` unless that name exists (then raise
    FileExistsError). Returns "link" if `tmp` still exists as a second name, else "rename"."""
    try:
        _link(tmp, final)
        return "link"
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
    if _rename_noreplace(tmp, final):
        return "rename"
    if os.name == "nt":
        os.rename(tmp, final)  # refuses an existing target there
        return "rename"
    _locked_rename(tmp, final)
    return "rename"


def _link(tmp: str, final: str) -> None:
    os.link(tmp, final)  # `tmp` is a regular file: nothing to follow; `final` never followed


_renamers: dict[str, object] = {}


def _rename_noreplace(tmp: str, final: str) -> bool:
    """renameat2(RENAME_NOREPLACE) / renamex_np(RENAME_EXCL) through libc; False where the
    system or the file system has neither."""
    import ctypes

    if "fn" not in _renamers:
        fn = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
                f = libc.renameat2
                f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                              ctypes.c_uint]
                fn = lambda a, b: f(-100, a, -100, b, 1)  # noqa: E731 AT_FDCWD, NOREPLACE
            elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
                f = libc.renamex_np
                f.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
                fn = lambda a, b: f(a, b, 0x4)  # noqa: E731 RENAME_EXCL
        except (OSError, AttributeError, TypeError):
            fn = None
        _renamers["fn"] = fn
    fn = _renamers["fn"]
    if fn is None:
        return False
    if fn(os.fsencode(tmp), os.fsencode(final)) == 0:  # type: ignore[operator]
        return True
    code = ctypes.get_errno()
    if code in _NO_NOREPLACE:
        return False
    raise OSError(code, os.strerror(code), final)  # EEXIST becomes FileExistsError


_dir_lock = threading.Lock()


def _locked_rename(tmp: str, final: str) -> None:
    """Last resort: check and rename while holding an exclusive flock on the folder, which
    every Loom writer that lands here takes too."""
    import fcntl

    folder = os.path.dirname(final) or "."
    with _dir_lock:
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.lexists(final):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), final)
            os.rename(tmp, final)
        finally:
            os.close(fd)  # releases the flock
