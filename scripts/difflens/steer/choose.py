"""Which latents to steer, with which edits, and the word each one is held against.

A latent's word comes from its best-matching attribute (``latents.csv``'s ``best_attribute``, from the attribute
AUROC of ``sae.analysis``): ``colour=red`` and ``has_red=1`` both give ``red``, ``label=red circle`` gives
``red circle``. ``choose_latents`` takes the ``n`` latents of highest AUROC whose words are among ``words`` ([]: any),
one latent per word (the best of each), so the most word-aligned latents of an SAE are steered.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data.common import replace_word
from .splice import EDITS, Edit, SteerError, latent_codes


def word_of(attribute: str) -> str:
    """The word of an indicator name ``column=value``: ``X`` of ``has_X=1``, else the value."""
    column, _, value = str(attribute).partition("=")
    return column[4:] if column.startswith("has_") and value == "1" else value


def choose_latents(table: pd.DataFrame, n: int, words: list[str] = ()) -> pd.DataFrame:
    """The ``n`` latents (rows of ``latents.csv``) of highest AUROC whose word is in ``words`` (any if empty), one
    per word; columns latent, word, attribute, auroc. An SAE with none is an error naming what it has."""
    t = table.assign(word=table["best_attribute"].map(word_of)).sort_values("auroc", ascending=False, kind="stable")
    if len(words):
        t = t[t["word"].isin(list(words))]
    t = t[t["word"].astype(str) != ""].drop_duplicates("word").head(n)
    if t.empty:
        seen = sorted(set(table["best_attribute"].astype(str)))[:12]
        raise SteerError(f"steer.words {list(words)}: no latent of this SAE matches one best; its latents' best "
                         f"attributes include {seen}")
    return t.rename(columns={"best_attribute": "attribute"})[["latent", "word", "attribute", "auroc"]] \
        .reset_index(drop=True)


def clamp_values(sae, x: torch.Tensor, latents: list[int], quantiles: list[float],
                 batch_size: int = 8192) -> dict[tuple[int, float], float]:
    """{(latent, q): the q-quantile of the latent's code over the vectors ``x`` where it fires} (0 where it never
    fires): the values a ``clamp`` edit at quantile q sets."""
    codes = {j: [] for j in latents}
    with torch.no_grad():
        for a in range(0, len(x), batch_size):
            z = latent_codes(sae, x[a:a + batch_size].to(sae.b_pre.device).float(), list(latents))
            for k, j in enumerate(latents):
                codes[j].append(z[:, k][z[:, k] > 0].cpu())
    out = {}
    for j in latents:
        fired = torch.cat(codes[j]).numpy()
        for q in quantiles:
            out[(j, q)] = float(np.quantile(fired, q)) if len(fired) else 0.0
    return out


def edits_for(latents: list[int], kinds: list[str], strengths: list[float], clamps: dict) -> list[Edit]:
    """Every edit of each latent: ``add`` at each strength, ``ablate`` once, ``clamp`` at each quantile's value."""
    bad = [k for k in kinds if k not in EDITS]
    if bad:
        raise SteerError(f"steer.edits: {bad} are not edits; allowed: {list(EDITS)}")
    out = []
    for j in latents:
        for kind in kinds:
            if kind == "add":
                out += [Edit(int(j), "add", float(s)) for s in strengths]
            elif kind == "ablate":
                out.append(Edit(int(j), "ablate"))
            else:
                out += [Edit(int(j), "clamp", v, f"q{q:g}") for (jj, q), v in clamps.items() if jj == j]
    return out


def matched_latents(sae, x: torch.Tensor, rows: pd.DataFrame, per_image: int, chosen: pd.DataFrame) -> pd.DataFrame:
    """For each chosen latent (``choose_latents``), the latent of ``sae`` (another SAE of the same layer, such as the
    untrained control) of highest AUROC for the same attribute on the vectors ``x`` of the images ``rows``
    (``per_image`` rows of ``x`` each): columns latent, word, attribute, auroc, and ``matches`` (the chosen latent)."""
    from ..sae.analysis import attribute_auroc, image_scores, indicator_columns

    names, indicators = indicator_columns(rows, sorted({a.partition("=")[0] for a in chosen["attribute"]}))
    missing = sorted(set(chosen["attribute"]) - set(names))
    if missing:
        raise SteerError(f"attributes {missing} of the steered latents are not indicator columns of the rows")
    cols = [names.index(a) for a in chosen["attribute"]]
    auc = attribute_auroc(image_scores(sae, x, positions=per_image), indicators[:, cols])
    best = auc.argmax(0)
    return pd.DataFrame({"latent": best, "word": chosen["word"].to_numpy(), "attribute": chosen["attribute"].to_numpy(),
                         "auroc": auc[best, np.arange(len(cols))], "matches": chosen["latent"].to_numpy()})


def caption_naming(row: pd.Series, word: str, column: str | None) -> str | None:
    """The caption in which ``word``'s CMI map is read for an image: its own caption if it holds the word, else its
    caption with the image's value of ``column`` (the attribute the word belongs to, such as the canonical object's
    colour) replaced by the word, else None (the image has no such map)."""
    from ..info.inputs import has_word

    caption = str(row.get("caption", "") or "")
    if caption and has_word(caption, word):
        return caption
    own = str(row.get(column, "")) if column else ""
    if caption and own and has_word(caption, own):
        return replace_word(caption, own, word)
    return None


def word_column(rows: pd.DataFrame, word: str, attribute: str) -> str | None:
    """The attribute column ``word`` is a value of: the attribute's own column when it holds the word as a value,
    else the first column of ``rows`` that does (``has_red=1``'s word ``red`` is a value of ``colour``)."""
    own = str(attribute).partition("=")[0]
    candidates = [own] + [c for c in rows.columns if c != own]
    for c in candidates:
        if c in rows.columns and (rows[c].astype(str) == word).any():
            return c
    return None
