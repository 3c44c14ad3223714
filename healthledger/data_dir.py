"""The data directory is the service's alone: directories 0700, files 0600, whatever the process umask.

It holds the SQLite database, the key files and the embedded chain (README, Configuration). Modes are
set explicitly: the usual umask 022 would make every file 0644, readable by every local user. SQLite
creates `-wal`, `-shm` and `-journal` with the mode of the database file (sqlite3 os_unix.c,
findCreateFileMode, which also fchmods them past the umask), so a database file is created 0600 here
before SQLite opens it. Looser modes found later (files of an older release, a restored backup) are
tightened with a warning rather than refused: the service keeps running, and says what it changed. What it
may not change (a read-only mount such as a Kubernetes Secret volume of key files, or a directory another
user owns, such as an emptyDir) is left as it is, with a warning: its mode is the mount's owner's to set.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Final

import structlog

log = structlog.get_logger(__name__)

PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600
_GROUP_AND_OTHER: Final = 0o077
_NOT_OURS_TO_CHANGE: Final = (errno.EROFS, errno.EPERM, errno.EACCES)  # chmod(2): read-only, not the owner
SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")  # files SQLite keeps beside a database


def private_dir(path: Path) -> Path:
    """`path` as a directory of mode 0700: created (with missing parents, each 0700) or tightened."""
    _make_parents(path.parent)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        tighten(path)
    else:
        os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
    return path


def private_file(path: Path) -> Path:
    """`path` as a file of mode 0600: created empty (missing parents 0700) if absent, else tightened.

    Existing parent directories are left as they are: a database may live outside the data directory.
    """
    try:
        new_private_file(path).close()
    except FileExistsError:
        tighten(path)
    return path


def new_private_file(path: Path) -> BinaryIO:
    """A new file of mode 0600 at `path`, open for writing (missing parents 0700).

    Raises FileExistsError if the name is taken, by a file or a symlink (O_EXCL, which never follows one).
    """
    _make_parents(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have taken owner bits too
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def sync_dir(path: Path) -> None:
    """Make the names just created, renamed or removed in directory `path` durable (POSIX fsync(2) of the
    directory: a file's own fsync covers its data, not the entry that names it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_sqlite_file(path: Path) -> Path:
    """A SQLite database file created 0600 before SQLite opens it (its companions then inherit the mode);
    existing companions left by an older release are tightened too."""
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            tighten(companion)
    return path


def tighten(path: Path) -> bool:
    """Take group and other permissions off an existing file or directory (never through a symlink).

    Returns True, with a warning naming the path and both modes, when it had any; False, with a warning, when
    the mode may not be changed here (a read-only file system, another owner).
    """
    try:
        info = path.lstat()
    except FileNotFoundError:  # gone meanwhile (SQLite removes its -wal and -shm on close)
        return False
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode) or not mode & _GROUP_AND_OTHER:
        return False
    try:
        os.chmod(path, mode & ~_GROUP_AND_OTHER)
    except OSError as exc:
        if exc.errno not in _NOT_OURS_TO_CHANGE:
            raise
        log.warning("data_dir.mode_left", path=str(path), mode=f"{mode:o}", reason=errno.errorcode[exc.errno])
        return False
    log.warning("data_dir.mode_tightened", path=str(path), was=f"{mode:o}", now=f"{mode & ~_GROUP_AND_OTHER:o}")
    return True


def secure_data_dir(data_dir: Path) -> Path:
    """At start: the data directory created 0700, and everything already under it tightened (warned).

    Symlinks are neither followed nor changed; what they point to is not the data directory's.
    """
    private_dir(data_dir)
    for root, dirs, files in os.walk(data_dir):  # os.walk does not descend into symlinked directories
        for name in (*dirs, *files):
            tighten(Path(root) / name)
    return data_dir


def _make_parents(path: Path) -> None:
    """Create the missing directories of `path`, each 0700; existing ones are not touched."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile: not ours to change
        os.chmod(directory, PRIVATE_DIR_MODE)
