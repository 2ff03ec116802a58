"""Cross-attention probes for UNet text models (DAAM-style word heat maps).

``record_cross_attention(model)`` swaps a recording processor into every cross-attention module (``...attn2``) of
the model's UNet. The processor computes the attention probabilities explicitly, softmax(Q K^T * scale) with
scale = 1/sqrt(head_dim), and returns exactly what the default processor returns; each call's probabilities,
averaged over heads, are reshaped to (B, n_tokens, h, w) and summed per layer over calls (timesteps)::

    with record_cross_attention(model, tokens_of_interest=idx) as rec:
        for t in timesteps:
            model.denoise(x_t, t, cond)
    heat = aggregate_maps(rec.maps, size=x_t.shape[-2:])      # (B, len(idx), H, W)

Token indices of a word come from ``word_token_indices(tokenizer, prompt, word)``.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def _grid(n: int, size: tuple[int, int] | None) -> tuple[int, int]:
    """Spatial grid (h, w) with h * w = n queries of a feature map downsampled from the latent ``size``."""
    if size is not None:
        f = 1
        while f <= max(size):
            h, w = math.ceil(size[0] / f), math.ceil(size[1] / f)
            if h * w == n:
                return h, w
            f *= 2
    s = math.isqrt(n)
    if s * s != n:
        raise ValueError(f"cannot place {n} attention queries on a grid of latent size {size}")
    return s, s


class CrossAttentionRecorder:
    """Holds per-layer attention maps: ``maps[layer]`` (B, n_tokens, h, w), summed over ``calls[layer]`` calls.

    With ``select`` set to a (B,) bool mask before a call, only the selected rows of that call are recorded, summed
    into one row: ``maps[layer]`` is then (1, n_tokens, h, w) whatever the batches looked like (a caller that
    mixes several prompts in one batch records one prompt's rows, over as many calls as it takes). With ``slots``
    set instead to a (B,) long tensor (``n_slots`` given), row ``i`` of a call is summed into slot ``slots[i]`` (-1:
    not recorded): ``maps[layer]`` is (n_slots, n_tokens, h, w), each slot one image's sum over the calls and
    batches of a sampling run.
    """

    def __init__(self, tokens_of_interest: list[int] | None = None, n_slots: int | None = None):
        self.tokens = list(tokens_of_interest) if tokens_of_interest is not None else None
        self.n_slots = n_slots
        self.slots: torch.Tensor | None = None
        self.maps: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.latent_size: tuple[int, int] | None = None
        self.select: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget every map (e.g. before the next batch of images)."""
        self.maps.clear()
        self.calls.clear()

    def add(self, layer: str, probs: torch.Tensor) -> None:
        """Store head-averaged probabilities (B, heads, N, T) of one call of ``layer``."""
        p = probs.float().mean(dim=1)  # (B, N, T)
        if self.select is not None:
            if not bool(self.select.any()):
                return
            p = p[self.select.to(p.device)].sum(dim=0, keepdim=True)
        if self.tokens is not None:
            p = p[..., self.tokens]
        h, w = _grid(p.shape[1], self.latent_size)
        m = p.transpose(1, 2).reshape(p.shape[0], p.shape[2], h, w)
        if self.slots is not None:
            keep = self.slots >= 0
            if not bool(keep.any()):
                return
            slotted = torch.zeros((self.n_slots, *m.shape[1:]), dtype=m.dtype, device=m.device)
            m = slotted.index_add_(0, self.slots[keep].to(m.device), m[keep.to(m.device)])
        if layer in self.maps:
            if self.maps[layer].shape != m.shape:
                raise ValueError(f"cross-attention map of {layer} changed shape from {tuple(self.maps[layer].shape)} "
                                 f"to {tuple(m.shape)}: call reset() between batches")
            self.maps[layer] += m
        else:
            self.maps[layer] = m
        self.calls[layer] = self.calls.get(layer, 0) + 1

    def processor(self, layer: str) -> "RecordingAttnProcessor":
        return RecordingAttnProcessor(self, layer)


class RecordingAttnProcessor:
    """A diffusers attention processor equal in output to ``AttnProcessor2_0`` that records the probabilities."""

    def __init__(self, recorder: CrossAttentionRecorder, layer: str):
        self.recorder = recorder
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, height, width = hidden_states.shape
            hidden_states = hidden_states.view(b, c, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, seq_len, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads

        def heads(x):  # (B, L, heads * d) -> (B, heads, L, d)
            return x.view(b, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scores = (query.float() @ key.float().transpose(-1, -2)) / math.sqrt(head_dim)
        if attention_mask is not None:
            scores = scores + attention_mask.float()
        probs = scores.softmax(dim=-1)
        self.recorder.add(self.layer, probs.detach())
        out = (probs.to(value.dtype) @ value).transpose(1, 2).reshape(b, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_modules(unet) -> dict[str, torch.nn.Module]:
    """Every cross-attention module (``attn2`` of the transformer blocks) of a UNet, by module path."""
    from diffusers.models.attention_processor import Attention

    return {name: m for name, m in unet.named_modules()
            if isinstance(m, Attention) and m.is_cross_attention and name.endswith("attn2")}


def attention_denoiser(model):
    """The module whose attention is recorded: an adapter's UNet or transformer, or the module itself."""
    for name in ("unet", "transformer"):
        if getattr(model, name, None) is not None:
            return getattr(model, name)
    return model


def text_attention_modules(model) -> tuple[dict[str, torch.nn.Module], bool]:
    """(the modules whose attention on text ``record_cross_attention`` records, whether they are joint attention):
    cross-attention where the denoiser has it; else the joint attention of an adapter that says where its text
    tokens are (``attention_text``); ({}, False) for a denoiser that attends to no text (a class-conditional DiT)."""
    from .joint_attention import joint_attention_modules

    denoiser = attention_denoiser(model)
    modules = cross_attention_modules(denoiser)
    if modules or not hasattr(model, "attention_text"):
        return modules, False
    return joint_attention_modules(denoiser), True


def has_text_attention(model) -> bool:
    """Whether the model's denoiser attends to text tokens that ``record_cross_attention`` can record."""
    return bool(text_attention_modules(model)[0])


@contextmanager
def record_cross_attention(model, tokens_of_interest: list[int] | None = None, n_slots: int | None = None):
    """Record cross-attention maps of every forward pass inside the block; yields a ``CrossAttentionRecorder``.

    ``model``: a model adapter (its ``.unet`` or ``.transformer``) or a ``UNet2DConditionModel``. Cross-attention
    (``attn2``) where the denoiser has it (SD, SDXL, PixArt); else the image-to-text part of the joint attention of
    SD3 and FLUX.1 (``joint_attention``), whose text tokens are the adapter's ``attention_text`` (positions of
    ``attention_tokenizer``'s tokens).
    ``tokens_of_interest``: token positions to keep (default: all); ``n_slots``: the recorder's slot count (rows
    recorded by ``CrossAttentionRecorder.slots``). The original processors come back on exit.
    """
    from .joint_attention import RecordingJointProcessor

    unet = attention_denoiser(model)
    modules, joint = text_attention_modules(model)
    rec = CrossAttentionRecorder(tokens_of_interest, n_slots)
    if joint:
        first, length = model.attention_text
        processors = {name: RecordingJointProcessor(m.processor, rec, name, first, length)
                      for name, m in modules.items()}
    else:
        processors = {name: rec.processor(name) for name in modules}
    if not modules:
        raise ValueError(f"{type(unet).__name__} has no cross-attention (attn2) or joint attention modules to record")

    def note_size(_module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        grid = getattr(model, "_grid", None)
        rec.latent_size = tuple(sample.shape[-2:]) if sample.dim() == 4 or grid is None else (2 * grid[0],
                                                                                               2 * grid[1])

    originals = {name: m.processor for name, m in modules.items()}
    handle = unet.register_forward_pre_hook(note_size, with_kwargs=True)
    try:
        for name, m in modules.items():
            m.set_processor(processors[name])
        yield rec
    finally:
        handle.remove()
        for name, m in modules.items():
            m.set_processor(originals[name])


def aggregate_maps(maps: dict[str, torch.Tensor], size: tuple[int, int] | None = None, *, mode: str = "bilinear",
                   drop_lowest: bool = False, clamp: bool = False) -> torch.Tensor:
    """Average per-layer (B, T, h, w) maps (already summed over calls / timesteps) on one grid -> (B, T, H, W).

    Each map is upsampled with ``mode`` to ``size`` (default: the largest layer's), clamped at 0 with ``clamp``;
    ``drop_lowest`` leaves out the layers of the lowest resolution when there are others. DAAM's aggregation is
    ``mode="bicubic", drop_lowest=True, clamp=True``.
    """
    if not maps:
        raise ValueError("no cross-attention maps recorded (did a forward pass run inside record_cross_attention?)")
    if size is None:
        size = max((tuple(m.shape[-2:]) for m in maps.values()), key=lambda s: s[0] * s[1])
    size = tuple(int(s) for s in size)
    layers = list(maps.values())
    if drop_lowest:
        lowest = min(m.shape[-2] * m.shape[-1] for m in layers)
        layers = [m for m in layers if m.shape[-2] * m.shape[-1] > lowest] or layers
    kw = {} if mode == "nearest" else {"align_corners": False}
    ups = [F.interpolate(m.float(), size=size, mode=mode, **kw) for m in layers]
    if clamp:
        ups = [u.clamp(min=0) for u in ups]
    return torch.stack(ups).mean(dim=0)


def word_token_indices(tokenizer, prompt: str, word: str, max_length: int | None = None) -> list[int]:
    """Positions of ``word``'s tokens in ``prompt`` as the model sees it ([BOS] at 0), every whole-word occurrence.

    Works for CLIP BPE (a word may span several tokens) and word-level tokenizers; case-insensitive. Positions past
    ``max_length`` (default: the tokenizer's model_max_length) are dropped by truncation and not returned.
    """
    max_length = max_length or tokenizer.model_max_length
    spans = [(m.start(), m.end()) for m in re.finditer(rf"(?<!\w){re.escape(word.strip())}(?!\w)", prompt,
                                                         flags=re.IGNORECASE)]
    if not spans or not word.strip():
        return []
    enc = tokenizer(prompt, truncation=True, max_length=max_length, return_offsets_mapping=True)
    return [i for i, (s, e) in enumerate(enc["offset_mapping"])
            if e > s and any(s < b and e > a for a, b in spans)]
