"""Files: atomic writes (a result is complete on disk or absent), JSON, the one CSV writer, locks."""

import csv
import errno
import fcntl
import io
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager

from elastic_keras.errors import ElasticKerasError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files get the permissions a plain open() would give them (mkstemp makes them 0600;
# FIDELITY.md R5).
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path in the same folder; on success move it onto `path`.

    `suffix` keeps a required ending (Keras wants `.weights.h5`, `.keras`).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file", path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_json(path, obj):
    """Write `obj` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path):
    """A JSON file as an object; a corrupt or unreadable file ends in one message."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ElasticKerasError(f"{path} is corrupt ({e}); restore it or delete its run "
                                "directory") from None
    except OSError as e:
        raise ElasticKerasError(f"cannot read {path}: {e.strerror}") from None


# What to do about an OS error, by its errno (FIDELITY.md R11).
_ADVICE = {
    errno.EACCES: "make it writable or choose another folder (--out, --runs-root)",
    errno.EPERM: "make it writable or choose another folder (--out, --runs-root)",
    errno.EROFS: "the file system is read-only: choose a folder on another one",
    errno.ENOSPC: "the disk is full: free some space, then run the command again",
    errno.EDQUOT: "the disk quota is spent: free some space, then run the command again",
    errno.ENAMETOOLONG: "choose a shorter name or a shorter path",
    errno.ENOTDIR: "a file stands where a folder is needed: move it or choose another path",
    errno.EEXIST: "a file stands where a folder is needed: move it or choose another path",
    errno.EISDIR: "a folder stands where a file is needed: give a file path",
    errno.ENOENT: "check the path",
}


def os_error_line(e: OSError) -> str:
    """One line for an OS error: the path, what went wrong, what to do (FIDELITY.md R11)."""
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    what = e.strerror or str(e)
    advice = _ADVICE.get(e.errno or 0, "check the path and its permissions")
    return f"{where}: {what}; {advice}" if e.filename else f"{what}; {advice}"


def check_writable_folder(path, option):
    """Make sure `path` is (or can be made) a folder this process can write into, before any
    work is done; otherwise one line naming `option`, the path and what to do (FIDELITY.md
    R11). Creates the folder."""
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTDIR):
            e = OSError(errno.ENOTDIR, "a file, not a folder", e.filename)
        elif e.filename and os.path.basename(e.filename).startswith(".tmp-probe-"):
            e = OSError(e.errno, e.strerror, path)  # name the folder, not the probe
        raise ElasticKerasError(f"{option} {os_error_line(e)}") from None
    return path


def save_arrays(path, arrays):
    """Backend tensors or variables as one .npz file, atomically."""
    import keras
    import numpy as np

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, *[keras.ops.convert_to_numpy(a) for a in arrays])


def load_arrays(path):
    """The arrays of an .npz written by save_arrays, in order."""
    import numpy as np

    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def remove_unlisted(folder, keep, prefixes):
    """Remove the files of `folder` named with one of `prefixes` that `keep` does not name."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(prefixes) and name not in keep:
                os.remove(os.path.join(folder, name))


class Held(Exception):
    """The lock is held by another process (its holder's words in the message)."""


@contextmanager
def exclusive(path, wait=False, on_wait=None):
    """Hold an exclusive `flock` on `path` (created if need be) and write who holds it.

    wait=False: raise Held when another process holds it; wait=True: call `on_wait(holder)`
    once, then block until it is free. The kernel releases the lock when the holder exits or
    dies; the file stays (removing it could split two waiters onto two files).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise Held(holder(path)) from None
            if on_wait:
                on_wait(holder(path))
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = {"pid": os.getpid(), "host": platform.node(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def holder(path):
    """Who holds the lock file `path`, as its holder wrote it."""
    try:
        with open(path, encoding="utf-8") as f:
            h = json.loads(f.read() or "{}")
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (OSError, ValueError, KeyError):
        return "another worker"


def csv_text(columns, rows, cell=None):
    """CSV of `rows` (dicts) in the order of `columns`; `cell(column, value)` formats a value
    (None is blank). The one CSV writer of the package: same input, same bytes."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] if cell is None else cell(c, row[c])
                         for c in columns])
    return buf.getvalue()


def write_csv(path, columns, rows, cell=None):
    """Write `rows` as CSV to `path` atomically (see csv_text)."""
    return write_text(path, csv_text(columns, rows, cell))


def _jsonable(o):
    # numpy scalars and arrays
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
