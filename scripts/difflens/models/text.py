"""Text encoders of the newer families: CLIP (penultimate hidden states and the pooled or projected embedding, as
SDXL and SD3 use them; FLUX's CLIP gives only its pooled embedding) and T5 (last hidden states and the padding
mask). Prompts are padded to the encoder's length, as the pipelines pad them."""
from __future__ import annotations

import torch


def token_ids(tokenizer, prompts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                    max_length=max_length or tokenizer.model_max_length)
    return enc.input_ids, enc.attention_mask


def clip_states(encoder, tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states (B, L, D), pooled (B, P)): ``text_embeds`` of a CLIP with projection, else the
    pooler output."""
    ids, _ = token_ids(tokenizer, prompts)
    out = encoder(ids.to(device), output_hidden_states=True)
    pooled = getattr(out, "text_embeds", None)
    return out.hidden_states[-2], out.pooler_output if pooled is None else pooled


def t5_states(encoder, tokenizer, prompts: list[str], device, max_length: int,
              masked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden states (B, max_length, D), padding mask (B, max_length)); the encoder sees the mask only when
    ``masked`` (PixArt's pipeline passes it; SD3's and FLUX's do not)."""
    ids, mask = token_ids(tokenizer, prompts, max_length)
    mask = mask.to(device)
    return encoder(ids.to(device), attention_mask=mask if masked else None)[0], mask


def load_part(loader, source: str, subfolder: str, wanted: bool, dtype=None, **load):
    """``loader.from_pretrained(source, subfolder=...)`` when ``wanted`` (weights in ``dtype``), else None."""
    if not wanted:
        return None
    kwargs = {} if dtype is None else ({"torch_dtype": dtype} if loader.__module__.startswith("diffusers")
                                       else {"dtype": dtype})
    return loader.from_pretrained(source, subfolder=subfolder, **kwargs, **load)
