"""Raw data of configs/paper_smoke.yaml: the fixture files of ``fixtures_data`` (the real on-disk formats of
Oxford-IIIT Pet, Caltech-101, ARO's Visual Genome sets and COCO 2017), staged where ``download_dataset`` downloads to.

Each source's folder ``<results>/raw/<raw name>/`` gets the files its download leaves there, the extraction markers
of its archives included, so the rule ``download_dataset`` finds everything present and fetches nothing (torchvision
keeps an existing Pet or Caltech folder; ``difflens.data.sources.fetch_all`` keeps an existing file without a
checksum and skips an archive whose marker is there), and ``prepare_dataset`` converts the fixture files.

    python tests/paper_data.py <results_dir>      # stages every raw folder that is missing, skips the others
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

import fixtures_data as fx  # noqa: E402

#: Caltech-101 classes and images: 3 + 2 images split 1/1/1 and 1/1/0 by the config's fractions (train, val and
#: test non-empty, two classes in train: what Diff-C and the probes need); BACKGROUND_Google, which torchvision
#: expects in the folder, is left out by the converter
CALTECH_COUNTS = {"accordion": 3, "Faces_easy": 2, "BACKGROUND_Google": 1}
#: Oxford-IIIT Pet: 2 of the fixture's breeds x (2 trainval + 1 test); the converter holds one trainval image per
#: breed out as val
PETS = {"n_trainval": 2, "n_test": 1}
PETS_LEFT_OUT = "Bengal"  # the fixture's last class id, so the ids left stay 1..n as the converter requires


def archive_markers(remotes) -> list[str]:
    """The markers ``fetch_all`` leaves once it has unpacked a source's archives."""
    return [f".{r.filename}.extracted" for r in remotes if r.extract]


def stage_pets(raw: Path) -> None:
    """The fixture, less one breed: its list lines and its images."""
    fx.build_pets(raw, **PETS)
    base = raw / "oxford-iiit-pet"
    for path in (base / "annotations").glob("*.txt"):
        kept = [line for line in path.read_text().splitlines() if not line.startswith(f"{PETS_LEFT_OUT}_")]
        path.write_text("\n".join(kept) + "\n")
    for path in (base / "images").glob(f"{PETS_LEFT_OUT}_*.jpg"):
        path.unlink()


def stage_caltech(raw: Path) -> None:
    fx.build_caltech(raw, CALTECH_COUNTS)


def stage_vg(raw: Path) -> None:
    from difflens.data.aro import VG_REMOTES

    fx.build_vg(raw)
    for name in archive_markers(VG_REMOTES):
        (raw / name).write_text("ok\n")


def stage_coco(raw: Path) -> None:
    from difflens.data.coco import REMOTES

    fx.build_coco2017(raw)
    for name in archive_markers(REMOTES):
        (raw / name).write_text("ok\n")


#: raw folder name (``difflens.data.registry.raw_name``) -> what stages it
STAGES = {"pets": stage_pets, "caltech101": stage_caltech, "aro_vg": stage_vg, "coco2017": stage_coco}


def stage_raw(results: Path, raws=None, log=print) -> list[str]:
    """Stage ``<results>/raw/<raw>/`` for each raw name (all of ``STAGES`` by default) that is not there yet (built in
    a side folder, renamed when complete); returns the names staged now."""
    staged = []
    for raw in raws or STAGES:
        if raw not in STAGES:
            raise KeyError(f"no fixture for raw folder {raw!r}; known: {sorted(STAGES)}")
        dest = Path(results) / "raw" / raw
        if dest.is_dir():
            log(f"{dest}: already there, skipped")
            continue
        work = dest.with_name(raw + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        STAGES[raw](work)
        work.rename(dest)
        staged.append(raw)
        log(f"{dest}: staged ({sum(1 for p in dest.rglob('*') if p.is_file())} files)")
    return staged


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python {Path(__file__).name} <results_dir>", file=sys.stderr)
        return 2
    stage_raw(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
