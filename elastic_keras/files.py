"""Atomic file writes (a result is either complete on disk or absent), JSON and the one CSV writer."""

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager

from .errors import ElasticKerasError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files get the permissions a plain open() would give them (mkstemp makes them 0600).
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path in the same folder; on success move it onto `path`.

    `suffix` keeps a required ending (Keras wants `.weights.h5`, `.keras`).
    """
    path = os.fspath(path)
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
