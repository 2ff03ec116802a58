"""Fetch a model's files once, before any GPU job: only the components and file types the pipeline loads.

A hub model (``models.<name>.source`` is a hub id such as ``stable-diffusion-v1-5/stable-diffusion-v1-5``) is
downloaded by the local rule ``download_model`` into ``<model_cache>/<org>--<name>/``, a plain diffusers folder
that every model job then loads with ``local_files_only``. A local folder as ``source`` needs no download.

What is fetched (``select_files``): ``model_index.json`` and, for each component the adapter of the model's kind
loads (``COMPONENT_FOLDERS``), its ``*.json`` and ``*.txt`` files (configs, tokenizer vocabulary and merges) and one
set of weights: the plain ``*.safetensors`` files, else the plain ``*.bin`` files (never fp16 / ema / non-ema
variants, Flax, ONNX or single-file ``.ckpt`` copies, which the loaders do not read). An external baseline's
transformers image model (kind ``image_encoder``) brings its top-level ``*.json`` files and one set of weights.

``mirror``: a local folder laid out like the hub (``<mirror>/<org>/<name>/...``), for sites that keep their own
copy of the hub's repositories (and for the tests); None = the Hugging Face Hub.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path, PurePosixPath

from .catalog import ModelConfigError, check_architecture

#: subfolders each adapter loads (kind -> folders); model_index.json is fetched besides them
COMPONENT_FOLDERS = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "dit": ("transformer", "vae", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
    "pixart": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sd3": ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
            "tokenizer_3", "scheduler"),
    "flux": ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
}
#: folders that hold weights (the others hold only configs and vocabularies)
WEIGHT_FOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer")
MARKER = ".difflens-fetched.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_VARIANT = re.compile(r"\.(fp16|fp32|bf16|ema|non_ema|non-ema)\.")


class ModelFetchError(RuntimeError):
    """A model's files could not be fetched; the message names the model, its source and the cache folder."""


def is_hub_id(source: str) -> bool:
    """``org/name`` that is not an existing local folder."""
    return bool(_HUB_ID.match(str(source))) and not Path(source).is_dir()


def cache_folder_name(source: str) -> str:
    """The folder under the model cache that holds a hub model: ``org/name`` -> ``org--name``."""
    if not _HUB_ID.match(str(source)):
        raise ModelConfigError(f"{source!r} is not a hub id of the form org/name")
    return str(source).replace("/", "--")


def _weights(paths: list[PurePosixPath]) -> list[PurePosixPath]:
    """One set of weights among ``paths``: the plain ``*.safetensors``, else the plain ``*.bin``."""
    plain = [p for p in paths if not _VARIANT.search(p.name)]
    return [p for p in plain if p.suffix == ".safetensors"] or [p for p in plain if p.suffix == ".bin"]


def select_image_encoder_files(files: list[str]) -> list[str]:
    """A transformers image model (``kind`` ``image_encoder``, the external baselines): its top-level ``*.json``
    files (config, image processor, weight index) and one set of top-level weights."""
    top = [PurePosixPath(f) for f in files if "/" not in f]
    chosen = [str(p) for p in top if p.suffix == ".json"] + [str(p) for p in _weights(top)]
    missing = [what for what, ok in (("config.json", "config.json" in chosen),
                                     ("preprocessor_config.json", "preprocessor_config.json" in chosen),
                                     ("weights (*.safetensors or *.bin)", bool(_weights(top)))) if not ok]
    if missing:
        raise ModelFetchError(f"the repository lacks {missing} that an image model needs (it has {len(files)} "
                              f"files, e.g. {sorted(files)[:8]})")
    return sorted(chosen)


def unneeded_folders(kind: str, options: dict) -> tuple[str, ...]:
    """Component folders a model's loader options leave out (SD3 with ``t5: false``: its T5, about 9 GB)."""
    return ("text_encoder_3", "tokenizer_3") if kind == "sd3" and options.get("t5") is False else ()


def select_files(kind: str, files: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """The repository files (posix paths) that the ``kind`` adapter loads, less the folders in ``skip``
    (``unneeded_folders``); raises when a component is missing."""
    if kind == "image_encoder":
        return select_image_encoder_files(files)
    if kind not in COMPONENT_FOLDERS:
        raise ModelConfigError(f"models of kind {kind!r} are not fetched from a hub; fetched kinds: "
                               f"{sorted(COMPONENT_FOLDERS)}")
    by_folder: dict[str, list[PurePosixPath]] = {}
    for name in files:
        p = PurePosixPath(name)
        if len(p.parts) == 2:
            by_folder.setdefault(p.parts[0], []).append(p)
    chosen = [f for f in files if f == "model_index.json"]
    missing = []
    for folder in (f for f in COMPONENT_FOLDERS[kind] if f not in skip):
        here = by_folder.get(folder, [])
        chosen += [str(p) for p in here if p.suffix in (".json", ".txt")]
        if folder in WEIGHT_FOLDERS:
            weights = _weights(here)
            if not weights:
                missing.append(f"{folder}/ weights (*.safetensors or *.bin)")
            chosen += [str(p) for p in weights]
        if not any(p.suffix == ".json" for p in here):
            missing.append(f"{folder}/ config")
    if missing:
        raise ModelFetchError(f"the repository lacks {missing} that a {kind} model needs (it has {len(files)} "
                              f"files, e.g. {sorted(files)[:8]})")
    return sorted(chosen)


def _list_files(source: str, mirror: Path | None, token: str | None) -> list[str]:
    if mirror is not None:
        root = mirror / source
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist in the mirror {mirror}")
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    from huggingface_hub import HfApi, constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or constants.HF_HUB_OFFLINE:  # fail at once instead of after the client's own retries
        raise ConnectionError("HF_HUB_OFFLINE is set: the hub cannot be reached from here")
    return sorted(HfApi(token=token).list_repo_files(source))


def _copy_files(source: str, files: list[str], dest: Path, mirror: Path | None, token: str | None) -> None:
    if not files:
        return
    if mirror is not None:
        for name in files:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mirror / source / name, target)
        return
    from huggingface_hub import snapshot_download

    snapshot_download(source, local_dir=dest, allow_patterns=files, token=token)


def fetch_model(name: str, kind: str, source: str, dest: str | Path, *, mirror: str | Path | None = None,
                token: str | None = None, config_key: str | None = None, skip: tuple[str, ...] = ()) -> dict:
    """Download the files of hub model ``source`` that a ``kind`` adapter loads into ``dest``; write the marker
    ``dest/.difflens-fetched.json`` last and return its content. ``name`` is the model's config name and
    ``config_key`` the key holding ``source`` (default ``models.<name>.source``), both for errors; ``skip``: component
    folders left out (``unneeded_folders``).

    Files already in ``dest`` with the right size are kept (a rerun after an interruption resumes).
    """
    dest = Path(dest)
    mirror = Path(mirror) if mirror else None
    where = f"the mirror {mirror}" if mirror else "the Hugging Face Hub"
    start = time.time()
    try:
        token = token or os.environ.get("HF_TOKEN")
        listed = _list_files(source, mirror, token)
        dest.mkdir(parents=True, exist_ok=True)
        # the configs first, each checked: no weights are fetched for a model the kind's adapter cannot drive
        _copy_files(source, [f for f in listed if f == "model_index.json"], dest, mirror, token)
        check_architecture(kind, source, dest)
        files = select_files(kind, listed, tuple(skip))
        configs = [f for f in files if PurePosixPath(f).suffix in (".json", ".txt")]
        _copy_files(source, configs, dest, mirror, token)
        check_architecture(kind, source, dest)
        _copy_files(source, [f for f in files if f not in configs], dest, mirror, token)
    except ModelConfigError as exc:
        raise ModelConfigError(f"model {name!r}: config key models.{name}.kind: {exc}") from None
    except ModelFetchError as exc:
        raise ModelFetchError(f"model {name!r} ({source}): {exc}") from None
    except Exception as exc:  # network, authentication, a missing repository: one message naming what to check
        raise ModelFetchError(
            f"model {name!r}: could not fetch {source!r} from {where} into the cache folder {dest} "
            f"({type(exc).__name__}: {exc}). Run this rule where the network is reachable (it is a local rule: "
            f"the login node), log in with `hf auth login` for gated models, or copy the model's folder there "
            f"and point {config_key or f'models.{name}.source'} at it.") from None
    sizes = {f: (dest / f).stat().st_size for f in files}
    marker = {"model": name, "kind": kind, "source": source, "from": where, "files": sizes, "skipped": list(skip),
              "bytes": sum(sizes.values()), "seconds": round(time.time() - start, 1)}
    (dest / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    return marker
