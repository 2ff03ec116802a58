"""HDF5 helpers shared by the extraction writers and the feature reader: atomic files, string columns, attributes.

A file is written under a hidden temporary name in its final folder and renamed into place only once it is
complete and closed, so a reader (or Snakemake) never sees half a file, and an interrupted job leaves no output.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..provenance import code_identity, library_versions

STR = h5py.string_dtype("utf-8")
#: bump when the layout of the extraction files changes incompatibly
FORMAT_VERSION = 1
_VERSIONED = ("torch", "diffusers", "transformers", "numpy", "h5py")


def provenance() -> dict:
    """Attributes every extraction file carries besides its own: format version, difflens's version and git commit,
    the versions of the libraries that shape its numbers, creation time."""
    return {"format_version": FORMAT_VERSION, **code_identity(), "versions": library_versions(_VERSIONED),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open a new HDF5 file for writing that appears at ``path`` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    f = h5py.File(tmp, "w")
    try:
        yield f
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


def write_strings(f: h5py.Group, name: str, values) -> h5py.Dataset:
    """A 1-d UTF-8 string dataset."""
    return f.create_dataset(name, data=np.asarray([str(v) for v in values], dtype=object), dtype=STR)


def read_strings(ds: h5py.Dataset, sel=slice(None)) -> np.ndarray:
    """A string dataset (or a selection of it) as a numpy ``str`` array."""
    return np.asarray(ds.asstr()[sel], dtype=str)


def set_attrs(obj: h5py.HLObject, attrs: dict) -> None:
    """Store scalars as they are and anything else (dicts, lists, None) as JSON text."""
    for key, value in attrs.items():
        if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
            obj.attrs[key] = value
        else:
            obj.attrs[key] = json.dumps(value)


def get_attrs(obj: h5py.HLObject) -> dict:
    """Inverse of ``set_attrs``: JSON text (objects, lists, null) decoded, numpy scalars as Python scalars."""
    out = {}
    for key, value in obj.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and value[:1] in "{[n":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


class BackgroundWriter:
    """Runs write calls in one background thread, in submission order, with at most ``depth`` waiting, so that
    storing (and compressing) a batch overlaps the computation of the next.

    Use as a context manager: leaving the block waits for every pending write. A failed write is re-raised in the
    caller at its next ``submit`` or at the exit; after a failure, or when the block itself fails, the remaining
    writes are dropped (the caller's atomic files then vanish with the error, so nothing half-written is left).
    """

    def __init__(self, depth: int = 2):
        import queue
        import threading

        self._queue: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._work, name="difflens-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None and not self._abandoned:
                fn, args = item
                try:
                    fn(*args)
                except BaseException as exc:  # handed to the caller
                    self._error = exc

    def submit(self, fn, *args) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((fn, args))

    def close(self) -> None:
        """Wait for every pending write; re-raise a failed one."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        self._abandoned = True  # the block failed: drop what is pending, keep its exception
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
