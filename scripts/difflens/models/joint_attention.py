"""DAAM for joint-attention transformers (SD3's MMDiT, FLUX.1): they have no cross-attention, but inside each joint
attention the image tokens attend to the text tokens. ``RecordingJointProcessor`` wraps a block's own processor
(whose output it returns unchanged) and records, per head averaged, the image queries' attention probabilities on
the text keys (the softmax taken over all keys, text and image, as the block computes it), as (B, 1, N, T) for the
``CrossAttentionRecorder``; the rest of DAAM (sums over calls, upsampling, the word's sub-token mean) is the same.

Where the text is: SD3 joint blocks put the image tokens first and the text after; FLUX's double-stream blocks the
text first; FLUX's single-stream blocks get the concatenation [text, image] as their one input.
"""
from __future__ import annotations

import math

import torch


def joint_attention_modules(denoiser) -> dict[str, torch.nn.Module]:
    """The attention module (``...attn``) of every joint or single-stream block, by module path."""
    return {name: m for name, m in denoiser.named_modules()
            if name.endswith(".attn") and hasattr(m, "set_processor") and name.split(".")[0] in
            ("transformer_blocks", "single_transformer_blocks")}


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H * D) -> (B, H, L, D)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def joint_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb, text_first: bool):
    """Queries and keys (B, H, L, D) of the whole joint sequence, as the block's processor computes them."""
    from diffusers.models.attention_processor import Attention

    if isinstance(attn, Attention):  # SD3's JointAttnProcessor2_0
        q, k = _heads(attn.to_q(hidden_states), attn.heads), _heads(attn.to_k(hidden_states), attn.heads)
        q = attn.norm_q(q) if attn.norm_q is not None else q
        k = attn.norm_k(k) if attn.norm_k is not None else k
        if encoder_hidden_states is not None:
            eq = _heads(attn.add_q_proj(encoder_hidden_states), attn.heads)
            ek = _heads(attn.add_k_proj(encoder_hidden_states), attn.heads)
            eq = attn.norm_added_q(eq) if attn.norm_added_q is not None else eq
            ek = attn.norm_added_k(ek) if attn.norm_added_k is not None else ek
            q, k = (torch.cat([eq, q], 2), torch.cat([ek, k], 2)) if text_first else \
                (torch.cat([q, eq], 2), torch.cat([k, ek], 2))
        return q, k
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import _get_qkv_projections

    q, k, _, eq, ek, _ = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)  # FluxAttnProcessor
    q, k = attn.norm_q(q.unflatten(-1, (-1, attn.head_dim))), attn.norm_k(k.unflatten(-1, (-1, attn.head_dim)))
    if attn.added_kv_proj_dim is not None:
        eq = attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim)))
        ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
        q, k = torch.cat([eq, q], dim=1), torch.cat([ek, k], dim=1)
    if image_rotary_emb is not None:
        q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
        k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
    return q.transpose(1, 2), k.transpose(1, 2)


def image_text_probs(q: torch.Tensor, k: torch.Tensor, image: slice, text: slice) -> torch.Tensor:
    """Head-averaged softmax(q k^T / sqrt(D)) of the ``image`` queries, over all keys, at the ``text`` keys:
    (B, 1, N, T); one head at a time (a FLUX.1 block at 1024 px: 4096 x 4608 scores per head)."""
    total = None
    for h in range(q.shape[1]):
        scores = (q[:, h, image].float() @ k[:, h].float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        p = scores.softmax(dim=-1)[..., text]
        total = p if total is None else total + p
    return (total / q.shape[1])[:, None]


class RecordingJointProcessor:
    """Runs the block's own processor and records its image-to-text attention (module doc)."""

    def __init__(self, original, recorder, layer: str, text_first: bool, text_len: int):
        self.original, self.recorder, self.layer = original, recorder, layer
        self.text_first, self.text_len = text_first, text_len

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kwargs):
        extra = {"image_rotary_emb": image_rotary_emb} if image_rotary_emb is not None else {}
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **extra, **kwargs)
        with torch.no_grad():
            q, k = joint_queries_keys(attn, hidden_states, encoder_hidden_states, image_rotary_emb, self.text_first)
            t = self.text_len
            n_text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else t
            if self.text_first:
                image, text = slice(n_text, None), slice(0, min(t, n_text))
            else:
                n_image = hidden_states.shape[1]
                image, text = slice(0, n_image), slice(n_image, n_image + min(t, n_text))
            self.recorder.add(self.layer, image_text_probs(q, k, image, text))
        return out
