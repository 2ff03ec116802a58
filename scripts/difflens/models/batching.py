"""Out-of-memory-tolerant batching, shared by every stage that runs the denoiser or the VAE over many rows: a batch
that runs out of memory is halved and retried, results stay the same (rows are seeded by their ids), and the
warning or error names the config key that set the batch."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of torch (CUDA, or any device that says so)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class HalvingBatcher:
    """Runs ``fn(a, b)`` over ``[0, n)`` in slices of at most ``size``; an out-of-memory error halves ``size``
    (for the rest of the run) and retries the slice. Fails only if a single item does not fit, with an error naming
    ``key``, the config key that set ``size``."""

    def __init__(self, size: int, what: str = "batch", key: str | None = None):
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self.size, self.what, self.key = int(size), what, key

    def run(self, n: int, fn) -> list:
        out, a = [], 0
        while a < n:
            b = min(n, a + self.size)
            try:
                out.append(fn(a, b))
                a = b
                continue
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not is_oom(exc):
                    raise
                if b - a == 1:
                    raise torch.OutOfMemoryError(
                        f"out of memory with a single {self.what}{f' ({self.key} backed off to 1)' if self.key else ''}"
                        f": the model and one row do not fit beside what else the device holds (another job on "
                        f"the same GPU?); free the device or use one with more memory ({exc})") from exc
            # outside the except block, so the traceback (and the tensors its frames hold) is already freed
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.size = max(1, (b - a) // 2)
            log.warning("out of memory at %d %s; continuing with %d%s", b - a, self.what, self.size,
                        f" (set {self.key}: {self.size} to start there)" if self.key else "")
        return out
