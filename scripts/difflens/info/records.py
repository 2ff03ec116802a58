"""Partial files: what a shard job appends its finished units of work to, so that a job restarted after a kill
resumes where it stopped.

* **Settings.** A partial file is only resumed with the settings its rows were made with: ``check_partial`` writes
  them to ``<partial>.settings.json`` before the first row and refuses a restart with other settings (naming both
  and the file); ``remove_partial`` deletes both files once the job's output is written.
* **Records.** An append-only record file: a job appends one record (named arrays) per finished unit of work, and a
  job restarted after a kill reads back every complete record. A record cut short by the kill is dropped and cut
  off the file. A record is its length (8 bytes, little endian) followed by an uncompressed ``.npz`` of its arrays
  (no pickles).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<Q")
#: the suffix of the file beside a partial file that holds the settings its rows were made with
SETTINGS_SUFFIX = ".settings.json"


def settings_path(partial: str | Path) -> Path:
    """``<partial>.settings.json``: where ``check_partial`` keeps the settings of ``partial``."""
    partial = Path(partial)
    return partial.with_name(partial.name + SETTINGS_SUFFIX)


def file_digest(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def table_digest(table: pd.DataFrame) -> dict:
    """A table's row count and the SHA-256 of its CSV text (index and every column): what names the rows a shard
    works on in its settings."""
    return {"rows": len(table), "sha256": hashlib.sha256(table.to_csv(lineterminator="\n").encode()).hexdigest()}


def job_identity(params, input) -> dict:
    """What a denoiser shard job's numbers depend on beyond the shard function's arguments (a rule's ``params``
    with kind, source, dtype and options, and its ``input`` with the model's marker files and the data set's
    dataset.json): how the model is loaded, and the SHA-256 of each of those files."""
    return {"model loading": {k: getattr(params, k) for k in ("kind", "source", "dtype", "options")},
            "model files": {Path(f).name: file_digest(f) for f in input.model},
            "dataset.json": file_digest(input.data)}


def shard_settings(model, rows: pd.DataFrame, *, n_draws: int, sampler, seed: int, identity: dict | None = None,
                   **more) -> dict:
    """What a denoiser shard's numbers depend on, as its partial file's settings: the model (kind and source), the
    draws (count, the proposal dataclass ``sampler``, seed), the rows (``table_digest``), ``more`` (the shard
    kind's own settings) and ``identity`` (the job's model loading and input files, ``job_identity``)."""
    return {"model": f"{model.kind} {model.source}", "n_draws": int(n_draws), "sampler": asdict(sampler),
            "seed": int(seed), "rows": table_digest(rows), **more, **(identity or {})}


def _plain(settings: dict) -> dict:
    """``settings`` as JSON gives them back (tuples become lists, keys strings), so that fresh and saved settings
    compare equal."""
    return json.loads(json.dumps(settings, sort_keys=True))


def check_partial(partial: str | Path, settings: dict) -> None:
    """Tie ``partial`` to the settings its rows are made with, before a job appends to it.

    No ``partial`` yet: ``settings`` are written to ``<partial>.settings.json`` (replacing a stale one). ``partial``
    there: its settings file must hold the same settings, else ValueError naming the file, each setting that differs
    with both values, and what to delete; a partial file without a settings file (its rows' settings unknown) is
    refused the same way."""
    partial, saved_at = Path(partial), settings_path(partial)
    settings = _plain(settings)
    if not partial.exists():
        tmp = saved_at.with_name(saved_at.name + ".tmp")
        tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, saved_at)
        return
    delete = f"delete {partial} (and {saved_at.name}) to start this shard afresh with the new settings"
    if not saved_at.is_file():
        raise ValueError(f"{partial}: a partial file without its settings file {saved_at.name}: the settings of its "
                         f"rows are unknown, so it cannot be resumed with {settings}; {delete}")
    try:
        saved = json.loads(saved_at.read_text())
    except ValueError as exc:
        raise ValueError(f"{saved_at}: unreadable settings of {partial} ({exc}); {delete}") from None
    differ = [f"{k}: {saved.get(k)!r} there, {settings.get(k)!r} now" for k in sorted(saved.keys() | settings.keys())
              if saved.get(k) != settings.get(k)]
    if differ:
        raise ValueError(f"{partial} holds rows made with other settings ({saved_at.name}: {'; '.join(differ)}); "
                         f"resuming would mix them: rerun with the settings there, or {delete}")


def remove_partial(partial: str | Path) -> None:
    """Delete a partial file and its settings file (the job's output is written)."""
    Path(partial).unlink(missing_ok=True)
    settings_path(partial).unlink(missing_ok=True)


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
