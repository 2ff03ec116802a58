"""Append-only record files: a job appends one record (named arrays) per finished unit of work, and a job restarted
after a kill reads back every complete record. A record cut short by the kill is dropped and cut off the file.

A record is its length (8 bytes, little endian) followed by an uncompressed ``.npz`` of its arrays (no pickles).
"""
from __future__ import annotations

import io
import logging
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<Q")


def append_record(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Append one record and flush it to disk."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    with open(path, "ab") as f:
        f.write(_LENGTH.pack(len(payload)) + payload)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | Path) -> list[dict[str, np.ndarray]]:
    """Every complete record of ``path`` in order ([] when the file does not exist); a torn last record (a job killed
    while appending) is cut off the file, with a warning naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    out, end = [], 0
    with open(path, "rb") as f:
        while True:
            head = f.read(_LENGTH.size)
            if len(head) < _LENGTH.size:
                break
            (length,) = _LENGTH.unpack(head)
            payload = f.read(length)
            if len(payload) < length:
                break
            try:
                with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                    out.append({k: z[k] for k in z.files})
            except (ValueError, OSError, EOFError, zipfile.BadZipFile):
                break
            end = f.tell()
    size = path.stat().st_size
    if end < size:
        log.warning("%s: dropping a torn record after %d complete ones (bytes %d-%d)", path, len(out), end, size)
        os.truncate(path, end)
    return out
