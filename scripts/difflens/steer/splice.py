"""A k-SAE spliced into the denoiser at its layer: the block's output is encoded, one latent's code edited, decoded,
and the SAE's own reconstruction error added back.

With ``z`` the code of an activation ``x`` and ``z'`` the edited code, the spliced activation is
``decode(z') + (x - decode(z))``. The decoder is linear, so this is ``x + (z'_j - z_j) * s * W_dec[j]`` (``s`` the
SAE's input scale, ``W_dec[j]`` the latent's unit decoder row in scaled units), and that is how it is computed: an
edit that leaves the code as it is adds exactly zero, so the denoiser's output is bit for bit the unspliced one.

Edits (``EDITS``) of latent ``j``'s code value ``z_j`` (0 where the TopK code does not hold it):

* ``ablate``: ``z_j -> 0``;
* ``clamp``: ``z_j -> value`` (the rule turns a quantile of the latent's activation on the data set into a value);
* ``add``: ``z_j -> z_j + value`` (``value`` times its decoder row, in the SAE's scaled units, where inputs lie at
  mean squared distance 1 from ``b_pre``).

A **spatial** SAE (trained on map positions) edits every position by its own code. A **pooled** SAE (trained on
the mean over positions) reads the code of the pooled vector, and spreads ``(z'_j - z_j) * s * W_dec[j]`` over the
positions by a weight map of mean 1 (so the pooled vector moves by exactly the SAE-level edit): ``heat`` weights
each position by the latent's encoder response there (``sae.model.latent_response``, the browser's heat map;
uniform where the latent responds nowhere), ``uniform`` weights all positions alike.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..sae.model import KSAE, latent_response

EDITS = ("ablate", "clamp", "add")
INPUTS = ("pooled", "spatial")
WEIGHTINGS = ("heat", "uniform")


class SteerError(ValueError):
    """Bad steering settings; the message names the value."""


@dataclass(frozen=True)
class Edit:
    """One edit of one latent: ``kind`` in ``EDITS``, ``value`` the clamp target or the added amount; ``tag`` names
    a clamp by the quantile its value came from (``q0.99``), so that latents of different SAEs compare by it."""

    latent: int
    kind: str
    value: float = 0.0
    tag: str = ""

    def __post_init__(self):
        if self.kind not in EDITS:
            raise SteerError(f"steering edit {self.kind!r} is not one of {list(EDITS)}")

    @property
    def label(self) -> str:
        """A short name: ``ablate``, ``add=+4``, ``clamp@q0.99`` (``clamp=1.5`` without a tag)."""
        if self.kind == "ablate":
            return self.kind
        if self.kind == "add":
            return f"add={self.value:+g}"
        return f"clamp@{self.tag}" if self.tag else f"clamp={self.value:g}"

    def target(self, z: torch.Tensor) -> torch.Tensor:
        """The edited code values of the latent, given its current values ``z``."""
        if self.kind == "ablate":
            return torch.zeros_like(z)
        if self.kind == "clamp":
            return torch.full_like(z, float(self.value))
        return z + float(self.value)


def latent_codes(sae: KSAE, x: torch.Tensor, latents: list[int]) -> torch.Tensor:
    """(m, len(latents)): each latent's value in the inference code of each row of ``x`` (m, d), 0 where it is not
    active; encoded ``sae.memory.encode_batch`` rows at a time (a map's positions at paper width would otherwise
    need a dense (positions x latents) matrix at once)."""
    from ..sae.memory import encode_batch

    wanted = torch.as_tensor(latents, device=x.device)
    z = torch.zeros(len(x), len(latents), device=x.device)
    step = encode_batch(sae.config.n_latents)
    for a in range(0, len(x), step):
        code = sae.encode(x[a:a + step])
        hit = code.indices[:, None] == wanted  # (nnz, len(latents))
        entry, which = hit.nonzero(as_tuple=True)
        z[a + code.rows()[entry], which] = code.values[entry].float()
    return z


def latent_code(sae: KSAE, x: torch.Tensor, latent: int) -> torch.Tensor:
    """Latent ``latent``'s value in the inference code of each row of ``x`` (m, d): 0 where it is not active."""
    return latent_codes(sae, x, [latent])[:, 0]


def position_weights(sae: KSAE, vectors: torch.Tensor, latent: int, weighting: str) -> torch.Tensor:
    """(b, positions) weights of mean 1 per image, from ``vectors`` (b, positions, d): the latent's encoder response
    at each position (``heat``; uniform for an image where it is 0 everywhere) or 1 (``uniform``)."""
    if weighting not in WEIGHTINGS:
        raise SteerError(f"steer.weighting {weighting!r} is not one of {list(WEIGHTINGS)}")
    b, n, d = vectors.shape
    if weighting == "uniform":
        return torch.ones(b, n, device=vectors.device)
    heat = latent_response(sae, vectors.reshape(-1, d), latent).view(b, n)
    mean = heat.mean(1, keepdim=True)
    return torch.where(mean > 0, heat / mean.clamp_min(1e-30), torch.ones_like(heat))


def edit_delta(sae: KSAE, maps: torch.Tensor, edit: Edit, input: str, weighting: str = "heat") -> torch.Tensor:
    """The change (b, C, H, W, float32) that the spliced SAE makes to a block's output maps (b, C, H, W) under
    ``edit`` (module docstring): zero, exactly, where the edit leaves the code as it is."""
    if input not in INPUTS:
        raise SteerError(f"SAE input {input!r} is not one of {list(INPUTS)}")
    b, c, h, w = maps.shape
    if c != sae.config.d:
        raise SteerError(f"the SAE reads {sae.config.d}-wide vectors but the layer's maps have {c} channels")
    vectors = maps.detach().float().reshape(b, c, h * w).transpose(1, 2).to(sae.b_pre.device)  # (b, n, C)
    direction = sae.W_dec[edit.latent].detach().float() * sae.input_scale  # in input units
    if input == "spatial":
        z = latent_code(sae, vectors.reshape(-1, c), edit.latent)
        dz = (edit.target(z) - z).view(b, h * w)  # per position
    else:
        z = latent_code(sae, vectors.mean(1), edit.latent)
        dz = (edit.target(z) - z)[:, None] * position_weights(sae, vectors, edit.latent, weighting)
    delta = dz[:, :, None] * direction  # (b, n, C)
    return delta.transpose(1, 2).reshape(b, c, h, w).to(maps.device)


def add_to_output(model, output, delta: torch.Tensor) -> None:
    """Add a map-shaped ``delta`` (b, C, H, W) to a block's raw ``output`` in place, in the output's own layout: a
    UNet block's map (or the first item of its tuple, which a down block also hands on as its skip), a transformer
    block's image tokens (b, N, C) (item ``image_stream`` of a joint-attention block's tuple)."""
    stream = getattr(model, "image_stream", 0)
    tensor = output[stream] if isinstance(output, tuple) else output
    if tensor.dim() == 3:  # tokens in row-major patch order (models.tokens)
        tensor.add_(delta.flatten(2).transpose(1, 2).to(tensor.dtype))
    else:
        tensor.add_(delta.to(tensor.dtype))


class Splice:
    """The hook state: the SAE, its input kind and weighting, the edit (None: off) and whether edits are active at
    the denoiser call being run (the generator turns it on for the configured timestep range)."""

    def __init__(self, model, sae: KSAE, layer: str, input: str, weighting: str = "heat"):
        if input not in INPUTS:
            raise SteerError(f"SAE input {input!r} is not one of {list(INPUTS)}")
        self.model, self.sae, self.input, self.weighting = model, sae, input, weighting
        self.path = model.canonical_layer(layer)
        self.edit: Edit | None = None
        self.active = True
        self.calls = 0  # denoiser calls that the edit changed (tests read it)

    def hook(self, _module, _inputs, output):
        if self.edit is None or not self.active:
            return None
        maps = self.model.layer_output_to_map(self.path, output)
        delta = edit_delta(self.sae, maps, self.edit, self.input, self.weighting)
        if delta.any():
            add_to_output(self.model, output, delta)
            self.calls += 1
        return None


@contextmanager
def spliced(model, sae: KSAE, layer: str, input: str, weighting: str = "heat"):
    """Within the block, ``model``'s ``layer`` runs through ``sae`` (a ``Splice``; set its ``edit``)."""
    splice = Splice(model, sae, layer, input, weighting)
    handle = model.layer_modules()[splice.path].register_forward_hook(splice.hook)
    try:
        yield splice
    finally:
        handle.remove()
