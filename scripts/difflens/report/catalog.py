"""The paper items (pure Python: the Snakefile reads it when it parses): one target each
(``figures/<family>/<name>.png`` with its ``.pdf`` and the ``.csv`` behind it), the input kinds it needs, and the
config that reproduces it at paper scale. ``items.render`` draws them."""
from __future__ import annotations

from dataclasses import dataclass


class UnknownItem(ValueError):
    """A paper item name that is not in the catalog."""


REVELIO, INFO, SHAPES, STEER = "revelio", "infodecomp", "shapes", "steer"
REVELIO_CONFIG, INFO_CONFIG = "configs/revelio.yaml", "configs/infodecomp.yaml"


@dataclass(frozen=True)
class Item:
    name: str
    family: str
    paper: str
    title: str
    needs: tuple[str, ...]
    config: str

    def target(self, results: str) -> str:
        return f"{results}/figures/{self.family}/{self.name}.png"


def _items() -> dict[str, Item]:
    table = [
        ("table2a", REVELIO, "Revelio Table 2a", "sigma_label and purity by layer", ("sae_summary",)),
        ("table2b", REVELIO, "Revelio Table 2b", "sigma_label and purity by timestep", ("sae_summary",)),
        ("table2c", REVELIO, "Revelio Table 2c", "sigma_label and purity by model", ("sae_summary",)),
        ("table2d", REVELIO, "Revelio Table 2d", "sigma_label and purity by DiT block", ("sae_summary",)),
        ("fig3", REVELIO, "Revelio Fig. 3", "top images of SAE latents by layer", ("sae_summary", "sae_grids")),
        ("fig5", REVELIO, "Revelio Fig. 5", "top images of SAE latents by timestep", ("sae_summary", "sae_grids")),
        ("fig7", REVELIO, "Revelio Fig. 7", "top images of SAE latents by model", ("sae_summary", "sae_grids")),
        ("fig9", REVELIO, "Revelio Fig. 9", "top images of SAE latents by DiT block", ("sae_summary", "sae_grids")),
        ("fig4", REVELIO, "Revelio Fig. 4", "Diff-C accuracy by layer", ("accuracy", "datasets")),
        ("fig6", REVELIO, "Revelio Fig. 6", "Diff-C accuracy by timestep", ("accuracy", "datasets")),
        ("fig8", REVELIO, "Revelio Fig. 8", "Diff-C accuracy by architecture", ("accuracy", "datasets")),
        ("table3", REVELIO, "Revelio Table 3", "Diff-C accuracy, layer x timestep", ("accuracy",)),
        ("table5", REVELIO, "Revelio Table 5", "Diff-C against linear probes and external baselines",
         ("accuracy", "datasets")),
        ("fig10", REVELIO, "Revelio Fig. 10", "PCA views (top-3 principal components as RGB)", ("pca",)),
        ("table1", INFO, "Kong et al. Table 1", "ARO accuracy: i^o beside i^s and the denoising error", ("aro",)),
        ("table2", INFO, "Kong et al. Table 2", "ARO accuracy per relation and attribute", ("aro",)),
        ("fig2", INFO, "Kong et al. Fig. 2", "MI, CMI and attention maps over the image",
         ("localization", "datasets")),
        ("table3", INFO, "Kong et al. Table 3", "word localization mIoU (held-out and oracle thresholds; attention on "
         "the draws and by DDIM inversion)", ("localization",)),
        ("table4", INFO, "Kong et al. Table 4", "prompt intervention: correlation of the change with CMI (i^s, i^o) "
         "and attention", ("intervention",)),
        ("fig3", INFO, "Kong et al. Fig. 3", "prompt intervention examples", ("intervention", "datasets")),
        ("mmse", INFO, "Kong et al. Appendix", "MMSE against log-SNR: caption, empty prompt and the Gaussian "
         "reference", ("mmse",)),
        ("micmi", INFO, "Kong et al. Appendix C", "image-level MI of each word against its CMI", ("localization",)),
        ("attributes", SHAPES, "shapes world", "which attribute is readable where: Diff-C, probes, SAE",
         ("accuracy", "sae_summary")),
        ("grid", STEER, "steering", "steered k-SAE latents: the images under each edit (latents x strengths)",
         ("steering",)),
        ("specificity", STEER, "steering", "per steered latent and edit: success, off-target changes, presence of "
         "the word's value before and after, mean change", ("steering",)),
        ("causal", STEER, "steering", "the edit's change against the word's CMI and the latent's heat map: Pearson "
         "r (95% CI), image and pixel level", ("steering",)),
    ]
    config = {REVELIO: REVELIO_CONFIG, INFO: INFO_CONFIG, SHAPES: "config.yaml", STEER: "config.yaml"}
    return {f"{fam}/{name}": Item(name, fam, paper, title, needs, config[fam])
            for name, fam, paper, title, needs in table}


ITEMS = _items()


def item(key: str) -> Item:
    if key not in ITEMS:
        raise UnknownItem(f"no paper item {key!r}; items: {sorted(ITEMS)}")
    return ITEMS[key]
