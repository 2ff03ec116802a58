"""The reader of what extraction wrote (layout: ``difflens.extract.layout``): pooled features, spatial maps,
latents. Analysis stages read features only through ``FeatureStore``.

Rows are never dropped or moved: row ``i`` of every file of shard ``k`` is sample ``k * shard_size + i``. The reader
drops invalid rows by default (``valid_only``), so ids, labels and features always stay aligned.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .h5io import get_attrs, read_strings
from .layout import ShardPlan, activations_dir, latents_dir, read_shard_plan
from .prompts import row_prompts

ROW_COLUMNS = ("sample_id", "split", "label", "label_name", "valid")
#: the identifying columns of a row table; every other column is a ground-truth attribute
ID_COLUMNS = ("sample_id", "split", "label", "label_name")


def target_columns(columns) -> list[str]:
    """What a row table can be read for: ``label`` and every attribute column (any column but the ids)."""
    return ["label"] + [c for c in columns if c not in ID_COLUMNS]
_SHARD_RE = re.compile(r"^shard-(\d+)\.h5$")
_T_RE = re.compile(r"^t(\d+)$")


class FeatureError(LookupError):
    """Requested features do not exist or are incomplete; the message lists what does exist."""


# ---- batches ------------------------------------------------------------------------------------------------------
@dataclass
class Features:
    """Rows of one kind of feature with their ids and labels; ``x`` is numpy or torch (see ``as_torch``)."""

    sample_id: np.ndarray
    split: np.ndarray
    label: np.ndarray
    x: "np.ndarray"

    def __len__(self) -> int:
        return len(self.sample_id)

    def torch(self, dtype=None) -> "Features":
        """The same rows with ``x`` and ``label`` as torch tensors (no copy for numpy float arrays)."""
        import torch

        x = self.x if torch.is_tensor(self.x) else torch.from_numpy(np.ascontiguousarray(self.x))
        label = self.label if torch.is_tensor(self.label) else torch.from_numpy(np.asarray(self.label))
        return replace(self, x=x if dtype is None else x.to(dtype), label=label)

    @staticmethod
    def concat(parts: list["Features"]) -> "Features":
        if not parts:
            raise FeatureError("no rows to concatenate")
        if _is_torch(parts[0].x):
            import torch

            x, label = torch.cat([p.x for p in parts]), torch.cat([p.label for p in parts])
        else:
            x, label = np.concatenate([p.x for p in parts]), np.concatenate([p.label for p in parts])
        return Features(np.concatenate([p.sample_id for p in parts]), np.concatenate([p.split for p in parts]),
                        label, x)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def read_rows(f: h5py.File) -> dict[str, np.ndarray]:
    """The row columns of an extraction file (ids, splits, labels, valid mask)."""
    out = {k: read_strings(f[k]) for k in ("sample_id", "split", "label_name") if k in f}
    out["label"] = f["label"][...].astype(np.int64)
    out["valid"] = f["valid"][...].astype(bool)
    return out


def read_attributes(f: h5py.File) -> dict[str, np.ndarray]:
    """The attribute columns of an extraction file (group ``attributes``; none in files of older versions)."""
    group = f.get("attributes")
    if group is None:
        return {}
    return {name: read_strings(ds) if ds.dtype.kind == "O" else ds[...] for name, ds in group.items()}


def _row_mask(rows: dict, split: str | list[str] | None, valid_only: bool) -> np.ndarray:
    mask = rows["valid"].copy() if valid_only else np.ones(len(rows["valid"]), bool)
    if split is not None:
        mask &= np.isin(rows["split"], [split] if isinstance(split, str) else list(split))
    return mask


def iter_file_rows(files: list[Path], key: str, *, split=None, valid_only: bool = True, batch_size: int = 1024,
                   dtype=np.float32, as_torch: bool = False) -> Iterator[Features]:
    """Dataset ``key`` of each file, ``batch_size`` stored rows at a time (fewer after filtering), in row order."""
    for path in files:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise FeatureError(f"{path} has no {key!r} (datasets: {sorted(f)}); maps are stored only with "
                                   f"extraction.save_maps: true")
            rows = read_rows(f)
            mask = _row_mask(rows, split, valid_only)
            ds = f[key]
            for a in range(0, len(mask), batch_size):
                sel = mask[a:a + batch_size]
                if not sel.any():
                    continue
                x = ds[a:a + len(sel)][sel].astype(dtype, copy=False)
                batch = Features(rows["sample_id"][a:a + len(sel)][sel], rows["split"][a:a + len(sel)][sel],
                                 rows["label"][a:a + len(sel)][sel], x)
                yield batch.torch() if as_torch else batch


def skipped_table(latent_files: list[str | Path]):
    """(sample_id, reason) of every image the latents shards mark invalid, as a pandas frame, in row order."""
    import pandas as pd

    rows = []
    for path in latent_files:
        with h5py.File(path, "r") as f:
            r = read_rows(f)
            reasons = read_strings(f["skip_reason"])
        rows += [(sid, why) for sid, ok, why in zip(r["sample_id"], r["valid"], reasons) if not ok]
    return pd.DataFrame(rows, columns=["sample_id", "reason"])


def write_skipped(latent_files: list[str | Path], out: str | Path):
    """The skipped-samples table (sample_id, reason) of all latents shards, written to ``out`` as CSV."""
    df = skipped_table(latent_files)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(out)
    return df


def write_index(files: list[str | Path], out: str | Path) -> dict:
    """A JSON summary of complete activation files: per timestep and layer, shards, rows, valid rows, shapes."""
    entries: dict[str, dict] = {}
    for path in files:
        with h5py.File(path, "r") as f:
            a = get_attrs(f)
            key = f"t{a['timestep']}/{a['layer']}"
            e = entries.setdefault(key, {"timestep": a["timestep"], "layer": a["layer"], "module": a["module"],
                                         "channels": int(f["pooled"].shape[1]), "map_shape": a["map_shape"],
                                         "maps": "maps" in f, "shards": 0, "n_rows": 0, "n_valid": 0})
            e["shards"] += 1
            e["n_rows"] += int(a["n_rows"])
            e["n_valid"] += int(a["n_valid"])
            common = {k: a[k] for k in ("model", "dataset", "kind", "source", "dtype", "resolution", "prompt",
                                         "seed", "noise_draws", "versions") if k in a}
    index = {**(common if files else {}), "entries": sorted(entries.values(), key=lambda e: (e["timestep"],
                                                                                             e["layer"]))}
    Path(out).write_text(json.dumps(index, indent=1) + "\n")
    return index


# ---- the store ----------------------------------------------------------------------------------------------------
class FeatureStore:
    """Read access to everything extraction wrote under one results folder.

    >>> store = FeatureStore("results")
    >>> tr = store.pooled("shapes", "shapes", "mid_block", 25, split="train")   # Features: ids, labels, (N, C)
    >>> for batch in store.iter_maps("shapes", "shapes", "up_blocks.1", 100, batch_size=32): ...
    >>> ds = store.maps_dataset("shapes", "shapes", "up_blocks.1", 100, split="train")  # a torch Dataset

    Pooled features are small and load whole; maps are only ever read ``batch_size`` rows (or one row) at a time,
    or whole when they fit in ``max_bytes``.
    """

    def __init__(self, results: str | Path = "results"):
        self.results = Path(results)

    # ---- what exists --------------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        root = self.results / "activations"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def datasets(self, model: str) -> list[str]:
        root = self.results / "activations" / model
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def timesteps(self, model: str, dataset: str) -> list[int]:
        root = activations_dir(self.results, model, dataset)
        return sorted(int(m.group(1)) for p in root.glob("t*") if (m := _T_RE.match(p.name))) if root.is_dir() \
            else []

    def layers(self, model: str, dataset: str, timestep: int) -> list[str]:
        root = activations_dir(self.results, model, dataset) / f"t{int(timestep)}"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def _layer_dir(self, model: str, dataset: str, layer: str, timestep: int) -> Path:
        root = activations_dir(self.results, model, dataset) / f"t{int(timestep)}"
        if (root / layer).is_dir():
            return root / layer
        for name in self.layers(model, dataset, timestep):  # a module path given for an aliased layer, or back
            files = sorted((root / name).glob("shard-*.h5"))
            if files:
                with h5py.File(files[0], "r") as f:
                    if layer in (f.attrs.get("module"), f.attrs.get("layer")):
                        return root / name
        ts = self.timesteps(model, dataset)
        raise FeatureError(f"no activations for model {model!r}, data set {dataset!r}, layer {layer!r}, timestep "
                           f"{timestep} under {self.results}; timesteps there: {ts}; layers at t{timestep}: "
                           f"{self.layers(model, dataset, timestep) if int(timestep) in ts else []}")

    def _plan(self, model: str, dataset: str) -> ShardPlan | None:
        path = latents_dir(self.results, model, dataset) / "shards.json"
        return read_shard_plan(path) if path.is_file() else None

    def _shards(self, folder: Path, model: str, dataset: str, what: str) -> list[Path]:
        found = {int(m.group(1)): p for p in folder.glob("shard-*.h5") if (m := _SHARD_RE.match(p.name))}
        plan = self._plan(model, dataset)
        n = plan.n_shards if plan else (max(found) + 1 if found else 0)
        missing = [k for k in range(n) if k not in found]
        if missing or not found:
            raise FeatureError(f"{what} in {folder} are incomplete: shard(s) {missing or 'all'} of {n or '?'} "
                               f"missing (run the extraction to completion first)")
        return [found[k] for k in range(n)]

    def files(self, model: str, dataset: str, layer: str, timestep: int) -> list[Path]:
        """Shard files of one (model, data set, layer, timestep), in shard order; raises if any is missing."""
        folder = self._layer_dir(model, dataset, layer, timestep)
        return self._shards(folder, model, dataset, f"activations of {layer} at t{timestep}")

    def latent_files(self, model: str, dataset: str) -> list[Path]:
        return self._shards(latents_dir(self.results, model, dataset), model, dataset, "latents")

    def attrs(self, model: str, dataset: str, layer: str, timestep: int) -> dict:
        """Attributes of the first shard (model, layer, module, timestep, prompt, seed, noise_draws, versions, ...)."""
        with h5py.File(self.files(model, dataset, layer, timestep)[0], "r") as f:
            return get_attrs(f)

    def rows(self, model: str, dataset: str, layer: str, timestep: int, *, split=None, valid_only: bool = True):
        """The row table of one (model, data set, layer, timestep) as a pandas frame, in the order ``pooled`` and
        ``iter_maps`` give their rows: sample_id, split, label, label_name and every attribute column."""
        import pandas as pd

        parts = []
        for path in self.files(model, dataset, layer, timestep):
            with h5py.File(path, "r") as f:
                rows, attributes = read_rows(f), read_attributes(f)
            mask = _row_mask(rows, split, valid_only)
            parts.append(pd.DataFrame({**{k: rows[k][mask] for k in ("sample_id", "split", "label", "label_name")},
                                       **{k: v[mask] for k, v in attributes.items()}}))
        return pd.concat(parts, ignore_index=True)

    def prompts(self, model: str, dataset: str, layer: str, timestep: int, *, split=None,
                valid_only: bool = True) -> dict[str, str]:
        """{sample id: the prompt its features were extracted with}, in row order: each file's row column ``prompt``
        (with ``extraction.prompt: clip``, CLIP's choice), or in files written before it the ``prompt`` template with
        ``{label}`` = the row's class name."""
        out = {}
        for path in self.files(model, dataset, layer, timestep):
            with h5py.File(path, "r") as f:
                rows = read_rows(f)
                given = read_strings(f["prompt"]) if "prompt" in f else None
                template = str(f.attrs["prompt"])
            mask = _row_mask(rows, split, valid_only)
            prompts = given[mask] if given is not None else row_prompts(template, rows["sample_id"][mask],
                                                                        rows["label_name"][mask])
            out.update((str(sid), str(text)) for sid, text in zip(rows["sample_id"][mask], prompts))
        return out

    def skipped(self, model: str, dataset: str):
        """The skipped-samples table (pandas: sample_id, reason) read from the latents shards."""
        return skipped_table(self.latent_files(model, dataset))

    # ---- pooled -------------------------------------------------------------------------------------------------
    def iter_pooled(self, model: str, dataset: str, layer: str, timestep: int, *, split=None,
                    valid_only: bool = True, batch_size: int = 8192, as_torch: bool = False) -> Iterator[Features]:
        """Pooled (N, C) float32 features in batches of rows, in data set order."""
        yield from iter_file_rows(self.files(model, dataset, layer, timestep), "pooled", split=split,
                                  valid_only=valid_only, batch_size=batch_size, as_torch=as_torch)

    def pooled(self, model: str, dataset: str, layer: str, timestep: int, *, split=None, valid_only: bool = True,
               as_torch: bool = False) -> Features:
        """All pooled features of one (model, data set, layer, timestep), optionally one split."""
        parts = list(self.iter_pooled(model, dataset, layer, timestep, split=split, valid_only=valid_only,
                                      as_torch=as_torch))
        if not parts:
            raise FeatureError(f"no rows of split {split!r} in {model}/{dataset} {layer} t{timestep}")
        return Features.concat(parts)

    # ---- maps ---------------------------------------------------------------------------------------------------
    def iter_maps(self, model: str, dataset: str, layer: str, timestep: int, *, split=None, valid_only: bool = True,
                  batch_size: int = 64, dtype=np.float32, as_torch: bool = False) -> Iterator[Features]:
        """Spatial maps (b, C, H, W), ``batch_size`` rows at a time: memory stays bounded by one batch."""
        yield from iter_file_rows(self.files(model, dataset, layer, timestep), "maps", split=split,
                                  valid_only=valid_only, batch_size=batch_size, dtype=dtype, as_torch=as_torch)

    def maps(self, model: str, dataset: str, layer: str, timestep: int, *, split=None, valid_only: bool = True,
             dtype=np.float32, as_torch: bool = False, max_bytes: int = 2 ** 30) -> Features:
        """All maps at once, only if they fit in ``max_bytes`` (as ``dtype``); else use ``iter_maps``."""
        files = self.files(model, dataset, layer, timestep)
        n, per_row = 0, 0
        for path in files:
            with h5py.File(path, "r") as f:
                if "maps" not in f:
                    raise FeatureError(f"{path} has no maps; set extraction.save_maps: true and re-extract")
                n += int(_row_mask(read_rows(f), split, valid_only).sum())
                per_row = int(np.prod(f["maps"].shape[1:])) * np.dtype(dtype).itemsize
        if n * per_row > max_bytes:
            raise FeatureError(f"maps of {layer} at t{timestep}: {n} rows x {per_row} bytes = {n * per_row / 2**30:.2f}"
                               f" GiB exceed max_bytes = {max_bytes / 2**30:.2f} GiB; use iter_maps or maps_dataset")
        return Features.concat(list(self.iter_maps(model, dataset, layer, timestep, split=split,
                                                   valid_only=valid_only, batch_size=256, dtype=dtype,
                                                   as_torch=as_torch)))

    def has_maps(self, model: str, dataset: str, layer: str, timestep: int) -> bool:
        """Whether the extraction kept this layer's spatial maps (extraction.save_maps)."""
        with h5py.File(self.files(model, dataset, layer, timestep)[0], "r") as f:
            return "maps" in f

    def maps_of(self, model: str, dataset: str, layer: str, timestep: int, sample_ids,
                dtype=np.float32) -> dict[str, np.ndarray]:
        """{sample id: its map (C, H, W)} for the given ids only (read row by row from the shards that hold them);
        an id in no shard raises, naming it."""
        wanted, out = set(map(str, sample_ids)), {}
        for path in self.files(model, dataset, layer, timestep):
            with h5py.File(path, "r") as f:
                ids = read_strings(f["sample_id"])
                rows = np.flatnonzero(np.isin(ids, list(wanted - set(out))))
                if len(rows) and "maps" not in f:
                    raise FeatureError(f"{path} has no maps; set extraction.save_maps: true and re-extract")
                for r in rows:
                    out[str(ids[r])] = f["maps"][int(r)].astype(dtype)
        missing = sorted(wanted - set(out))
        if missing:
            raise FeatureError(f"no maps of sample(s) {missing[:5]} in {model}/{dataset} {layer} t{timestep}")
        return out

    def maps_dataset(self, model: str, dataset: str, layer: str, timestep: int, *, split=None,
                     valid_only: bool = True, transform=None) -> "MapDataset":
        """A torch ``Dataset`` of (map float32 (C, H, W), label) read one row at a time (DataLoader workers ok)."""
        return MapDataset(self.files(model, dataset, layer, timestep), "maps", split=split, valid_only=valid_only,
                          transform=transform)

    # ---- latents ------------------------------------------------------------------------------------------------
    def iter_latents(self, model: str, dataset: str, *, split=None, valid_only: bool = True, batch_size: int = 256,
                     as_torch: bool = False) -> Iterator[Features]:
        """The model's latents (b, C, h, w) float32 of each image, in batches (for Diff-C and the estimators)."""
        yield from iter_file_rows(self.latent_files(model, dataset), "latents", split=split, valid_only=valid_only,
                                  batch_size=batch_size, as_torch=as_torch)

    def latents_dataset(self, model: str, dataset: str, *, split=None, valid_only: bool = True,
                        transform=None) -> "MapDataset":
        return MapDataset(self.latent_files(model, dataset), "latents", split=split, valid_only=valid_only,
                          transform=transform)


class MapDataset:
    """Random access to rows of one dataset (``maps`` or ``latents``) across shard files, one row per item.

    Items are ``(x, label)`` with ``x`` a float32 torch tensor; ``sample_ids``, ``splits``, ``labels`` describe the
    rows. Files open lazily in each process, so the object is safe to hand to DataLoader workers.
    """

    def __init__(self, files: list[Path], key: str, *, split=None, valid_only: bool = True, transform=None):
        self.files, self.key, self.transform = [Path(p) for p in files], key, transform
        ids, splits, labels, where = [], [], [], []
        for i, path in enumerate(self.files):
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise FeatureError(f"{path} has no {key!r}; maps are stored only with extraction.save_maps: true")
                rows = read_rows(f)
            mask = _row_mask(rows, split, valid_only)
            ids.append(rows["sample_id"][mask])
            splits.append(rows["split"][mask])
            labels.append(rows["label"][mask])
            where += [(i, int(r)) for r in np.flatnonzero(mask)]
        self.sample_ids = np.concatenate(ids) if ids else np.array([], str)
        self.splits = np.concatenate(splits) if splits else np.array([], str)
        self.labels = np.concatenate(labels) if labels else np.array([], np.int64)
        self._where = where
        self._handles: dict[int, h5py.File] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self._where)

    def _file(self, i: int) -> h5py.File:
        import os

        if self._pid != os.getpid():  # a forked worker must not share the parent's HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            self._handles[i] = h5py.File(self.files[i], "r")
        return self._handles[i]

    def __getitem__(self, index: int):
        import torch

        i, row = self._where[index]
        x = torch.from_numpy(self._file(i)[self.key][row].astype(np.float32))
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles = {}
