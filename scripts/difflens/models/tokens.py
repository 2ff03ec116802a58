"""Transformer blocks output image tokens (B, N, D) in row-major patch order; maps are (B, D, h, w)."""
from __future__ import annotations

import torch


def tokens_to_map(name: str, tokens: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """(B, N, D) -> (B, D, h, w) with ``transpose(1, 2).reshape`` (a plain ``view`` would mix channels and
    positions); ``grid`` is the token grid of the forward pass, else the square one."""
    b, n, d = tokens.shape
    h, w = grid if grid and grid[0] * grid[1] == n else (int(n ** 0.5),) * 2
    if h * w != n:
        raise ValueError(f"layer {name}: {n} tokens do not form a square grid")
    return tokens.transpose(1, 2).reshape(b, d, h, w)


class TokenMapMixin:
    """``layer_output_to_map`` for transformer adapters: the image tokens of a block's output (the output itself,
    or item ``image_stream`` of the tuple a joint-attention block returns: (text tokens, image tokens)) on the
    token grid ``_grid`` that the adapter's ``_forward`` sets."""

    _grid: tuple[int, int] | None = None
    image_stream: int = 0

    def layer_output_to_map(self, name: str, output) -> torch.Tensor:
        tokens = output[self.image_stream] if isinstance(output, tuple) else output
        return tokens_to_map(name, tokens, self._grid)
