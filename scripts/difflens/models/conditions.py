"""Conditions that are more than one tensor (a token sequence, a pooled vector, an attention mask), packed into one
tensor per prompt, so that every adapter's conditions go through the same prompt cache and ``denoise(x, t, cond)``.

``ConditionLayout(seq_len, width, pooled, mask)`` packs a (B, L, W) sequence, an optional (B, P) pooled vector (in
``ceil(P / W)`` extra rows after the sequence) and an optional (B, L) mask (one extra column) into a
(B, L + rows, W + mask) tensor; ``unpack`` gives them back exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConditionLayout:
    seq_len: int
    width: int
    pooled: int = 0
    mask: bool = False

    @property
    def pooled_rows(self) -> int:
        return math.ceil(self.pooled / self.width) if self.pooled else 0

    def pack(self, seq: torch.Tensor, pooled: torch.Tensor | None = None,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, w = seq.shape
        if (n, w) != (self.seq_len, self.width):
            raise ValueError(f"condition sequence {tuple(seq.shape[1:])} is not ({self.seq_len}, {self.width})")
        rows = [seq.float()]
        if self.pooled:
            flat = seq.new_zeros((b, self.pooled_rows * w), dtype=torch.float32)
            flat[:, : self.pooled] = pooled.float()
            rows.append(flat.view(b, self.pooled_rows, w))
        out = torch.cat(rows, dim=1)
        if self.mask:
            column = out.new_zeros((b, out.shape[1], 1))
            column[:, :n, 0] = mask.float()
            out = torch.cat([out, column], dim=2)
        return out

    def unpack(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(sequence (B, L, W), pooled (B, P) or None, mask (B, L) or None)."""
        seq = cond[:, : self.seq_len, : self.width]
        pooled = cond[:, self.seq_len:, : self.width].reshape(len(cond), -1)[:, : self.pooled] if self.pooled else None
        mask = cond[:, : self.seq_len, self.width] if self.mask else None
        return seq, pooled, mask
