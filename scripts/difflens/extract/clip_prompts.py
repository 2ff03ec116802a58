"""``extraction.prompt: clip``: a prompt per image chosen by a CLIP model from the data set's class names, so that a
conditional extraction never sees the image's true label.

As the authors' ``from_CLIP`` prompts (diffc_image_classification/feature_models/clip_infer.py): every class name
goes into the template (their templates: "A photo of a {}, a type of pet." and the like, one per data set), CLIP
embeds these prompts once and each image (the processor's 224 px resize and centre crop, CLIP's normalisation), and
the image's prompt is the one of highest cosine similarity (the first on a tie). They use OpenAI's ViT-B/32 through
the ``clip`` package; here any transformers CLIP-like model (``get_image_features`` and ``get_text_features``) with
its processor and tokenizer, from a hub id or a local folder. Prompts longer than the text tower's positions are cut
to fit.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from ..data.common import Dataset, DatasetError
from .prompts import format_prompt, uses_label

log = logging.getLogger(__name__)


class ClipPromptError(ValueError):
    """The prompt CLIP cannot be loaded or used; the message names it and the config key."""


def load_clip(source: str, *, device=None, local_files_only: bool = True):
    """(processor with image processor and tokenizer, CLIP-like model in eval mode on ``device``) of a transformers
    model folder or hub id."""
    from transformers import AutoModel, AutoProcessor

    key = "extraction.prompt_clip.source"
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=local_files_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise ClipPromptError(f"config key {key}: {source!r} could not be loaded as a transformers CLIP model with "
                              f"its processor and tokenizer ({type(exc).__name__}: {exc})") from None
    towers = [name for name in ("get_image_features", "get_text_features") if not hasattr(model, name)]
    if towers or getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise ClipPromptError(f"config key {key}: {source!r} ({type(model).__name__}) is not a CLIP-like model with "
                              f"an image and a text tower, an image processor and a tokenizer (missing: "
                              f"{towers or 'tokenizer or image processor'})")
    return processor, model.eval().to(device or "cpu")


def _embedding(out) -> torch.Tensor:
    """The projected embedding of a ``get_*_features`` call (a tensor, or an output whose pooler_output it is)."""
    return out if torch.is_tensor(out) else out.pooler_output


def text_positions(model) -> int | None:
    """The most tokens the text tower embeds (None when its config does not say)."""
    text = getattr(model.config, "text_config", model.config)
    return getattr(text, "max_position_embeddings", None)


class ClipPromptChooser:
    """Each image's prompt: the template filled with the class name whose prompt CLIP finds closest to the image."""

    def __init__(self, processor, model, class_names: list[str], template: str):
        if not uses_label(template):
            raise ClipPromptError(f"config key extraction.prompt_clip.template: {template!r} has no {{label}}, so "
                                  f"every class would give the same prompt")
        self.processor, self.model = processor, model
        self.class_names = [str(c) for c in class_names]
        self.prompts = [format_prompt(template, c) for c in self.class_names]
        self.device = next(model.parameters()).device
        limit = text_positions(model)
        tokens = processor.tokenizer(self.prompts, padding=True, truncation=limit is not None, max_length=limit,
                                     return_tensors="pt")
        with torch.no_grad():
            text = _embedding(model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()}))
        self.text = torch.nn.functional.normalize(text.float(), dim=-1)

    @torch.no_grad()
    def choose(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(class index, cosine similarity) of each image (PIL images)."""
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        image = _embedding(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        sims = torch.nn.functional.normalize(image.float(), dim=-1) @ self.text.T
        best = sims.argmax(dim=1)
        return best.cpu().numpy(), sims.gather(1, best[:, None])[:, 0].cpu().numpy()


def choose_prompts(chooser: ClipPromptChooser, dataset: Dataset, *, batch_size: int = 64,
                   progress: bool = True) -> list[dict]:
    """One row (sample_id, class_name, prompt, similarity) per readable image of the data set, in its order; an
    image that cannot be read is logged and left out (its latents are skipped too)."""
    ids = list(dataset.samples["sample_id"])
    out = []
    for start in tqdm(range(0, len(ids), batch_size), desc=f"CLIP prompts {dataset.name}", disable=not progress,
                      mininterval=5):
        readable, images = [], []
        for sid in ids[start:start + batch_size]:
            try:
                images.append(dataset.load_image(sid))
                readable.append(sid)
            except DatasetError as exc:
                log.warning("%s; no CLIP prompt", exc)
        if not images:
            continue
        best, sims = chooser.choose(images)
        out += [{"sample_id": sid, "class_name": chooser.class_names[b], "prompt": chooser.prompts[b],
                 "similarity": round(float(s), 6)} for sid, b, s in zip(readable, best, sims)]
    return out
