"""Rendering the paper items (``catalog.ITEMS``) from their inputs. Tables and plots cover every configured (model,
data set); the map figures (Kong et al. Fig. 2 and 3) show the first information run and name it in their title.

``render(key, inputs, png, pdf, csv, ...)`` is what the rule ``render_figure`` calls; from a notebook, pass the
same input lists (see ``Item.needs``: each kind is a list of paths)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .catalog import INFO, REVELIO, SHAPES, STEER, item
from .inputs import concat_csv, dataset_root, info_folder, read_csv, read_npz, require
from .revelio import ReportError
from .style import Palette

# ---- rendering ----------------------------------------------------------------------------------------------------
def _n_test(dataset_files) -> dict[str, int]:
    from ..data.common import Dataset

    sets = [Dataset.load(Path(p).parent) for p in dataset_files]
    return {ds.name: len(ds.split("test")) for ds in sets}


def _images(results: str, dataset: str, sample_ids) -> dict[str, np.ndarray]:
    from ..data.common import Dataset

    ds = Dataset.load(dataset_root(results, dataset))
    ids = list(dict.fromkeys(sample_ids))
    return {s: np.asarray(ds.load_image(s).convert("RGB"))
            for s in tqdm(ids, desc=f"images of {dataset}", mininterval=5, disable=len(ids) < 500)}


def _top_image_rows(summary: pd.DataFrame, results: str, grid_latents: int) -> pd.DataFrame:
    """The latents a grid shows (its first ``grid_latents`` by sigma rank) with their top images' sample ids."""
    from ..extract.store import FeatureStore

    store, out = FeatureStore(results), []
    for r in tqdm(summary.to_dict("records"), desc="top images", mininterval=5, disable=len(summary) < 20):
        folder = Path(results) / "sae" / r["model"] / r["dataset"] / r["run"] / r["input"] / f"t{int(r['timestep'])}" \
            / r["layer"]
        latents = read_csv(folder / "latents.csv", "a top-image figure")
        shown = latents[latents["sigma_rank"].between(0, grid_latents - 1)].sort_values("sigma_rank")
        if shown.empty:
            shown = latents.head(grid_latents)
        ids = store.rows(r["model"], r["dataset"], r["layer"], int(r["timestep"]), split=r["split"])["sample_id"]
        for l in shown.to_dict("records"):
            top = [str(ids.iloc[int(i)]) for i in str(l["top_images"]).split()]
            out.append({k: r[k] for k in ("model", "dataset", "run", "input", "layer", "timestep")} |
                       {k: l[k] for k in ("latent", "sigma_rank", "purity", "sigma", "best_attribute", "auroc")} |
                       {"top_images": " ".join(top)})
    return pd.DataFrame(out)


def render(key: str, inputs: dict[str, list[str]], png, pdf, csv, *, palette: Palette, results: str = "results",
           dit_models: list[str] = (), grid_latents: int = 3, identity: dict | None = None) -> pd.DataFrame:
    """Draw one paper item from its inputs and write its PNG, PDF and CSV; returns the table. ``identity``
    (``paper.identities`` of the config): which models, data sets and protocols are the papers', so that a paper's
    number is drawn beside ours only like for like (the table's ``paper_*`` columns say what differs elsewhere)."""
    from . import appendix, attributes, information, paper, revelio, steering

    it = item(key)
    what = f"{it.paper} ({it.family}/{it.name})"
    for kind in it.needs:
        for p in inputs.get(kind, []):
            require(p, what)
    title = f"{it.paper}: {it.title}"
    axes = {"table2a": "layer", "table2b": "timestep", "table2c": "model", "table2d": "dit",
            "fig3": "layer", "fig5": "timestep", "fig7": "model", "fig9": "dit"}
    if it.family == REVELIO and it.name.startswith("table2"):
        table = revelio.sae_table(concat_csv(inputs["sae_summary"], what), axes[it.name], dit_models, palette)
        table = paper.compare(table, paper.load_numbers(), identity or paper.identities({}), "revelio", [it.name],
                              "sigma_label", "sigma_label")
        revelio.plot_sae_table(table, axes[it.name], palette, png, pdf, title)
    elif it.family == REVELIO and it.name in ("fig3", "fig5", "fig7", "fig9"):
        chosen = revelio.select_grids(concat_csv(inputs["sae_summary"], what), axes[it.name], dit_models)
        if chosen.empty:
            raise ReportError(f"{what}: no SAE to show (DiT models: {list(dit_models) or 'none'})")
        table = _top_image_rows(chosen, results, grid_latents)
        images = {}
        for ds, g in table.groupby("dataset"):
            images.update(_images(results, ds, [s for ids in g["top_images"] for s in ids.split()]))
        revelio.top_image_mosaic(table, images, png, pdf, title)
    elif it.family == REVELIO and it.name in ("fig4", "fig6", "fig8", "table5"):
        acc = revelio.with_stderr(revelio.focus_targets(concat_csv(inputs["accuracy"], what)),
                                  _n_test(inputs["datasets"]))
        axis = {"fig4": "layer", "fig6": "timestep"}.get(it.name, "architecture")
        if it.name in ("fig4", "fig6"):
            table = revelio.accuracy_table(acc, axis)
        else:
            table = revelio.best_by_validation(acc if it.name == "table5" else acc[acc["classifier"] == "diffc"])
        table = paper.compare(table, paper.load_numbers(), identity or paper.identities({}), "revelio", [it.name],
                              "accuracy", "test_accuracy")
        revelio.plot_accuracy(table, axis, palette, png, pdf, title)
    elif key == f"{REVELIO}/table3":
        table = revelio.plot_accuracy_grid(concat_csv(inputs["accuracy"], what), png, pdf, title, palette)
    elif key == f"{REVELIO}/fig10":
        table = pd.DataFrame([{"model": Path(p).parts[-5], "dataset": Path(p).parts[-4],
                               "timestep": int(Path(p).parts[-2][1:]), "layer": Path(p).stem, "view": str(p)}
                              for p in inputs["pca"]])
        revelio.tile_pngs([(f"{r.model} · {r.dataset} · {r.layer} · t={r.timestep}", r.view)
                             for r in table.itertuples()], png, pdf, title, cols=1)
    elif it.family == INFO and it.name in ("table1", "table2"):
        table = information.aro_table(concat_csv(inputs["aro"], what, origin=True), per_group=it.name == "table2")
        if it.name == "table1":
            table = information.aro_paper(table, paper.load_numbers(), identity or paper.identities({}))
        information.plot_aro(table, it.name == "table2", png, pdf, title)
    elif key == f"{INFO}/table3":
        table = information.localization_table(concat_csv([p for p in inputs["localization"]
                                                            if p.endswith(".csv")], what, origin=True))
        table = paper.compare_keyed(table, paper.load_numbers(), identity or paper.identities({}), "paper_key",
                                    "steps", "miou")
        information.plot_localization(table, png, pdf, title)
    elif key == f"{INFO}/fig2":
        npz = [p for p in inputs["localization"] if p.endswith(".npz")][0]
        maps = read_npz(npz, what)
        rows = information.pick_map_rows(maps)
        model, ds = info_folder(npz)
        images = _images(results, ds, [maps["sample_id"][i] for i in rows])
        table = information.plot_heat_maps(maps, rows, images, png, pdf, f"{title} ({model} on {ds})")
    elif key == f"{INFO}/table4":
        table = concat_csv([p for p in inputs["intervention"] if p.endswith("intervention.csv")], what,
                           origin=True)
        key = np.where(table["edit"] == "omit", "intervention/" + table["level"] + "/" + table["predictor"], "")
        table = paper.compare_keyed(table.assign(paper_key=key), paper.load_numbers(),
                                    identity or paper.identities({}), "paper_key", "steps" if "steps" in table else None,
                                    protocol=paper.TABLE4_PROTOCOL)
        information.plot_intervention(table, png, pdf, title)
    elif key == f"{INFO}/fig3":
        npz = [p for p in inputs["intervention"] if p.endswith(".npz")][0]
        items = read_csv(Path(npz).with_name("intervention_items.csv"), what)
        maps = read_npz(npz, what)
        model, ds = info_folder(npz)
        pick = information.intervention_examples(items)
        images = _images(results, ds, pick["sample_id"])
        table = information.plot_intervention_examples(items, pick, maps, images, png, pdf,
                                                       f"{title} ({model} on {ds})")
    elif key == f"{INFO}/mmse":
        table = appendix.mmse_table(concat_csv(inputs["mmse"], what, origin=True))
        appendix.plot_mmse(table, png, pdf, title)
    elif key == f"{INFO}/micmi":
        table = pd.concat([appendix.micmi_table(read_npz(p, what), *info_folder(p)) for p in inputs["localization"]
                           if p.endswith(".npz")], ignore_index=True)
        appendix.plot_micmi(table, png, pdf, title)
    elif key == f"{SHAPES}/attributes":
        table = attributes.readability_table(concat_csv(inputs["accuracy"], what),
                                             concat_csv(inputs["sae_summary"], what))
        attributes.plot_readability(table, palette, png, pdf, title)
    elif key == f"{STEER}/grid":
        table, panels = steering.grid_table(steering.read_saes(inputs["steering"], what), what)
        steering.plot_grid(panels, png, pdf, title)
    elif key == f"{STEER}/specificity":
        table = steering.specificity_table(steering.read_saes(inputs["steering"], what))
        steering.plot_specificity(table, png, pdf, title)
    elif key == f"{STEER}/causal":
        table = steering.causal_table(steering.read_saes(inputs["steering"], what))
        steering.plot_causal(table, png, pdf, title)
    else:  # pragma: no cover - every item has a branch (tests render them all)
        raise ReportError(f"no renderer for {key!r}")
    table.to_csv(csv, index=False, lineterminator="\n")
    return table
