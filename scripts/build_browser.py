"""Rule feature_browser: the static feature browser of this run (results/browser/index.html, opens from disk):
every SAE's latents (statistics, top images with heat maps, quantile images, histogram; a steered latent's steering
strip), a PCA view of each layer's pooled features, and each scored image's information maps and ARO scores."""
import json
from pathlib import Path

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.extract.store import FeatureStore  # noqa: E402
from difflens.report.browser import (ImageBank, SiteWriter, add_steering, colour_columns,  # noqa: E402
                                     heat_maps, info_images, latent_pages, pca_view)
from difflens.sae.analysis import image_scores  # noqa: E402
from difflens.sae.data import load_vectors  # noqa: E402
from difflens.sae.model import KSAE  # noqa: E402

torch.set_num_threads(snakemake.threads)
p = snakemake.params
opts = p.options  # the config's browser section, its defaults filled in from the schema
results = Path(p.results)
site = SiteWriter(snakemake.output[0], title=f"difflens feature browser: {results}")
store = FeatureStore(results)
bank = ImageBank(site.folder, opts["thumbnail"])
datasets: dict[str, Dataset] = {}


def dataset(name: str) -> Dataset:
    if name not in datasets:
        datasets[name] = Dataset.load(results / "data" / name)
    return datasets[name]


SAE_KEYS = ("model", "dataset", "run", "input", "timestep", "layer")
#: the steered SAEs (steer.targets) whose steering files are inputs: key -> (effects.csv, images.npz)
steer_inputs = {Path(f) for f in snakemake.input.steer}
steered = {}
for v in p.steer:
    folder = results / "steer" / v["model"] / v["dataset"] / v["run"] / v["input"] / f"t{v['timestep']}" / v["layer"]
    if folder / "effects.csv" in steer_inputs and folder / "images.npz" in steer_inputs:
        steered[tuple(str(v[k]) for k in SAE_KEYS)] = (folder / "effects.csv", folder / "images.npz")

views = set()
for r in tqdm(p.runs, desc="browser: SAEs", mininterval=5):
    model, ds, layer, t = r["model"], r["dataset"], r["layer"], int(r["timestep"])
    folder = results / "sae" / model / ds / r["run"] / r["input"] / f"t{t}" / layer
    sae = KSAE.load(folder)
    summary = json.loads((folder / "summary.json").read_text())
    x, rows, per_image = load_vectors(store, model, ds, layer, t, input=r["input"], split=summary["split"])
    scores = image_scores(sae, x, positions=per_image).numpy()
    steer_files = steered.get(tuple(str(r[k]) for k in SAE_KEYS))
    effects = pd.read_csv(steer_files[0]) if steer_files else None
    pages = latent_pages(scores, pd.read_csv(folder / "latents.csv", dtype={"top_images": str}), top=opts["top"],
                         quantiles=opts["quantiles"], bins=opts["bins"], max_latents=opts["max_latents"],
                         keep=[] if effects is None else sorted(set(effects["latent"])))
    steering = add_steering(pages, effects, dict(np.load(steer_files[1])), opts["thumbnail"]) if steer_files else None
    ids = rows["sample_id"].astype(str).tolist()
    has_maps = store.has_maps(model, ds, layer, t)
    heat = min(len(pages), opts["heat_latents"]) if has_maps else 0
    for a in range(0, heat, 16):  # 16 latents' top images in memory at a time
        chunk = pages[a:min(a + 16, heat)]
        heat_maps(sae, store.maps_of(model, ds, layer, t, {ids[i] for pg in chunk for i in pg["top"]},
                                     dtype=np.float16), chunk, ids)
    used = sorted({i for pg in pages for i in pg["top"] + [q["image"] for q in pg["quant"]]})
    images = {str(i): [bank.src(dataset(ds), ids[i]), str(rows["label_name"].iloc[i])] for i in used}
    meta = {"model": model, "dataset": ds, "layer": layer, "timestep": t, "run": r["run"], "input": r["input"],
            "n_latents": sae.config.n_latents, "live": summary["live_latents"], "split": summary["split"],
            "n_images": len(rows), "sigma_label": summary["sigma_label"], "purity": summary["purity"],
            "sigma_definition": summary.get("sigma_definition", "sparse"),
            "null": {k: summary.get(f"null_purity_{k}") for k in ("p_value", "mean_p95", "beyond_share",
                                                                   "beyond_chance")},
            "maps": has_maps, "controls": {name: {k: c[k] for k in ("sigma_label", "purity", "best_auroc")}
                                           for name, c in summary["controls"].items()},
            "steered": [pg["id"] for pg in pages if "steer" in pg]}
    site.add("saes", meta, {"latents": pages, "images": images, **({"steer": steering} if steering else {})})
    log.info("%s/%s %s t%d %s/%s: %d latents listed, %d images, heat maps %s, steering strips for %s", model, ds,
             layer, t, r["run"], r["input"], len(pages), len(images),
             f"for {heat} latents" if has_maps else "none (maps not saved)", meta["steered"] or "none")
    if (model, ds, layer, t) in views:
        continue
    views.add((model, ds, layer, t))
    # the pooled features of the same rows: the SAE's own input when it is pooled, else read once here
    pooled = x.numpy() if r["input"] == "pooled" else store.pooled(model, ds, layer, t, split=summary["split"]).x
    pick, xy = pca_view(pooled, max_points=opts["max_points"], seed=p.seed)
    shown = rows.iloc[pick].reset_index(drop=True)
    site.add("views", {"model": model, "dataset": ds, "layer": layer, "timestep": t, "split": summary["split"]},
             {"x": np.round(xy[:, 0], 4).tolist(), "y": np.round(xy[:, 1], 4).tolist(),
              "img": [bank.src(dataset(ds), s) for s in shown["sample_id"].astype(str)],
              "ids": shown["sample_id"].astype(str).tolist(), "colour": colour_columns(shown)})

inputs = [Path(f) for f in snakemake.input.info]
for pair in p.info:
    folder = results / "info" / pair["model"] / pair["dataset"]
    maps_file, aro_file = folder / "localization_maps.npz", folder / "aro_items.csv"
    maps = dict(np.load(maps_file)) if maps_file in inputs else None
    aro = pd.read_csv(aro_file, dtype={"sample_id": str}) if aro_file in inputs else None
    entries = info_images(maps, aro, dataset(pair["dataset"]), bank)
    site.add("info", pair, {"images": entries})
    log.info("information view %s/%s: %d images", pair["model"], pair["dataset"], len(entries))
index = site.write()
log.info("wrote %s: %d SAEs, %d data views, %d information views, %d thumbnails", index, len(site.index["saes"]),
         len(site.index["views"]), len(site.index["info"]), len(bank))
