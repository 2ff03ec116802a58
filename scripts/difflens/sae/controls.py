"""Controls for a trained k-SAE: the same analysis read from SAEs that learned nothing, and a planted dictionary that
an SAE which learns must recover.

A claim about a trained SAE's latents (purer than random image sets, a latent per colour) is evidence only where an
SAE that learned nothing fails it. Pooled diffusion features are already clustered by class, so random directions
through them can look "pure". Two controls, analysed exactly like the trained SAE (``analysis.read_sae``):

* ``untrained``: the trained SAE's own starting point (``train.initial_sae``: the same seeded decoder draw, tied
  encoder, zero encoder bias, b_pre and input scale from the same training sample), saved by ``train_sae`` in the
  run's ``init/`` folder;
* ``random_directions``: the same b_pre and input scale with isotropic Gaussian unit directions as tied encoder and
  decoder rows (a seed of its own), so a control does not hinge on the init's uniform draw.

``planted_dictionary`` is the positive case: vectors built from known sparse atoms plus noise, where a trained SAE
recovers the atoms (``atom_recovery``: each atom's best cosine with a decoder row) and its controls do not.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..seeding import derive_seed
from .model import KSAE, SAEError

CONTROLS = ("untrained", "random_directions")
#: the folder, inside a run's folder, that holds its untrained control (``KSAE.save`` files)
INIT_FOLDER = "init"


@torch.no_grad()
def random_directions(init: KSAE, seed: int) -> KSAE:
    """A copy of ``init`` (its b_pre, input scale and threshold) whose decoder rows are isotropic Gaussian unit
    vectors drawn with ``seed``, the encoder tied to them with a zero bias."""
    sae = copy.deepcopy(init).cpu()
    gen = torch.Generator().manual_seed(seed)
    sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=gen))
    sae.normalize_decoder()
    sae.encoder.weight.copy_(sae.W_dec)
    sae.encoder.bias.zero_()
    return sae.to(init.b_pre.device).eval()


def control_saes(init: KSAE, seed: int, key: str = "") -> dict[str, KSAE]:
    """The controls of a run whose untrained state is ``init``: ``{"untrained": init, "random_directions": ...}``,
    the random directions seeded by (``seed``, ``key``: the run's identity, so runs of equal width differ)."""
    directions = random_directions(init, derive_seed(seed, "random directions", key))
    return {"untrained": init.eval(), "random_directions": directions}


def planted_dictionary(n_vectors: int, d: int, n_atoms: int, active: int, *, noise: float = 0.05,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``n_vectors`` vectors (n_vectors, d) = a common offset + the sum of ``active`` of ``n_atoms`` unit atoms
    (chosen uniformly without replacement, coefficients uniform in [1, 2]) + isotropic Gaussian noise of standard
    deviation ``noise`` per coordinate. Returns (vectors, atoms (n_atoms, d), each vector's coefficients (n_vectors,
    n_atoms), 0 for the atoms it does not hold)."""
    if not 0 < active <= n_atoms:
        raise SAEError(f"planted dictionary: active must be in [1, n_atoms = {n_atoms}], got {active}")
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    chosen = torch.rand(n_vectors, n_atoms, generator=gen).argsort(1)[:, :active]
    present = torch.zeros(n_vectors, n_atoms).scatter_(1, chosen, 1.0)
    coefficients = present * (1 + torch.rand(n_vectors, n_atoms, generator=gen))
    offset = 3 * torch.randn(d, generator=gen) / d ** 0.5
    x = offset + coefficients @ atoms + noise * torch.randn(n_vectors, d, generator=gen)
    return x, atoms, coefficients.numpy()


@torch.no_grad()
def atom_recovery(sae: KSAE, atoms: torch.Tensor) -> np.ndarray:
    """Each atom's best cosine with any of the SAE's decoder rows (n_atoms,)."""
    decoder = sae.W_dec.detach().float().cpu()
    decoder = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    unit = atoms.float() / atoms.norm(dim=1, keepdim=True)
    return (unit @ decoder.T).max(1).values.numpy()
