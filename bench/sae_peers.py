"""The three k-SAEs that ``bench/sae.py`` compares, behind one interface, each trained the way its library does it.

Every ``*SAE`` class takes the shared ``Settings`` and a sample of the training vectors, and has

* ``train(batches)``: optimisation steps, one per batch (b, d) of the list, in order;
* ``reconstruct(xb)``: (x_hat (b, d), fired (n,) bool: the latents active for some vector of the batch);
* ``decoder_rows()``: the decoder directions (n, d) (not necessarily unit-norm).

* ``difflens``: ``difflens.sae`` (``KSAE`` + ``SAETrainer``): b_pre at the geometric median, inputs scaled to unit
  mean squared norm around it, encoder tied to the unit-norm decoder, sparse decode, dead-latent AuxK.
* ``sparsify``: EleutherAI's ``SparseCoder``, stepped as its ``Trainer`` does it for one hookpoint (its ``Trainer``
  reads activations through hooks on a transformers model, so its step is replayed here): b_dec at the first batch's
  mean, decoder renormalised before each forward, loss ``fvu + auxk_alpha * auxk_loss`` with the dead-latent mask,
  the gradient parallel to the decoder rows removed. Differences to its ``Trainer``: a constant learning rate (its
  Adam branch warms up linearly over 1,000 steps and decays to 0; its default optimiser is schedule-free SignSGD at
  another lr), so that all three share the lr.
* ``overcomplete``: ``overcomplete.sae.TopKSAE`` with its default linear encoder, trained by its ``train_sae``
  helper (``train_sae_amp``, fp16 autocast, on a GPU), gradient clipping at 1.0 (the helper's default). It has no
  decoder bias (x_hat = z D), and its AuxK is its own ``top_k_auxiliary_loss``: the top half of all latents not
  chosen (not only dead ones) reconstruct the residual.

``available()`` says which peers import, and why not where one does not.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import torch

NAMES = ("difflens", "sparsify", "overcomplete")
INSTALL_HINT = "pip install --no-deps -r requirements-bench.txt"


@dataclass
class Settings:
    """What all three share: width ``d``, ``n`` latents, ``k`` active, ``lr`` (Adam, constant), ``aux_coef`` (0: no
    AuxK), ``dead_after`` (vectors without firing that make a latent dead for AuxK), the init ``seed``, ``device``."""

    d: int
    n: int
    k: int
    lr: float
    aux_coef: float
    dead_after: int
    seed: int
    device: torch.device


def _import_sparsify(device: torch.device):
    """sparsify, quietly (it prints which decoder it uses); its Triton decoder only on a GPU."""
    if device.type != "cuda":
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    with contextlib.redirect_stdout(io.StringIO()):
        import sparsify
    return sparsify


def _import_overcomplete():
    """overcomplete.sae. overcomplete 0.3.0 builds colour maps at import with ``matplotlib.cm.get_cmap``, which
    matplotlib 3.9 removed (requirements.txt pins 3.11): the same function from pyplot stands in for it."""
    import matplotlib.cm
    import matplotlib.pyplot as plt

    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = plt.get_cmap
    import overcomplete.sae
    return overcomplete.sae


def available(device: torch.device, names=NAMES) -> dict[str, str | None]:
    """name -> None if it can run, else why not (the import error and how to install the peers), for ``names``."""
    out = {"difflens": None}
    importers = {"sparsify": lambda: _import_sparsify(device), "overcomplete": _import_overcomplete}
    for name, importer in importers.items():
        if name not in names:
            continue
        try:
            importer()
            out[name] = None
        except Exception as e:  # noqa: BLE001 - an optional peer that fails to import, for any reason, is skipped
            out[name] = f"{type(e).__name__}: {e} ({INSTALL_HINT})"
    return out


class DifflensSAE:
    def __init__(self, s: Settings, sample: torch.Tensor):
        from difflens.sae.model import KSAE, SAEConfig
        from difflens.sae.train import SAETrainer, SAETrainSettings

        self.sae = KSAE(SAEConfig(d=s.d, n_latents=s.n, k=s.k), generator=torch.Generator().manual_seed(s.seed))
        self.sae.init_from_sample(sample.float().cpu())
        self.trainer = SAETrainer(self.sae.to(s.device).train(),
                                  SAETrainSettings(lr=s.lr, aux_coef=s.aux_coef, dead_after=s.dead_after, seed=s.seed))

    def train(self, batches):
        self.sae.train()
        for xb in batches:
            self.trainer.step(xb)

    @torch.no_grad()
    def reconstruct(self, xb):
        self.sae.eval()
        code = self.sae.encode(xb)
        fired = torch.zeros(self.sae.config.n_latents, dtype=torch.bool, device=xb.device)
        fired[code.indices[code.values > 0]] = True
        return self.sae.decode(code), fired

    def decoder_rows(self):
        return self.sae.W_dec.detach()


class SparsifySAE:
    def __init__(self, s: Settings, sample: torch.Tensor):
        sparsify = _import_sparsify(s.device)
        torch.manual_seed(s.seed)  # as its Trainer seeds each coder
        self.sae = sparsify.SparseCoder(s.d, sparsify.SparseCoderConfig(num_latents=s.n, k=s.k), s.device,
                                        dtype=torch.float32)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=s.lr)
        self.settings = s
        self.since_fired = torch.zeros(s.n, dtype=torch.long, device=s.device)
        self.started = False

    def step(self, xb):
        sae, s = self.sae, self.settings
        if not self.started:  # its Trainer: b_dec at the first batch's mean
            sae.b_dec.data = xb.mean(0).to(sae.dtype)
            self.started = True
        sae.set_decoder_norm_to_unit_norm()
        dead = self.since_fired > s.dead_after if s.aux_coef > 0 else None
        out = sae(xb, dead_mask=dead)
        (out.fvu + s.aux_coef * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            self.since_fired += len(xb)
            self.since_fired[out.latent_indices.flatten()] = 0

    def train(self, batches):
        for xb in batches:
            self.step(xb)

    @torch.no_grad()
    def reconstruct(self, xb):
        out = self.sae(xb)
        fired = torch.zeros(self.sae.num_latents, dtype=torch.bool, device=xb.device)
        fired[out.latent_indices[out.latent_acts > 0]] = True
        return out.sae_out.float(), fired

    def decoder_rows(self):
        return self.sae.W_dec.detach()


class OvercompleteSAE:
    def __init__(self, s: Settings, sample: torch.Tensor):
        self.lib = _import_overcomplete()
        torch.manual_seed(s.seed)
        self.sae = self.lib.TopKSAE(s.d, nb_concepts=s.n, top_k=s.k, device=str(s.device))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=s.lr)
        self.settings = s

    def criterion(self, x, x_hat, pre_codes, codes, dictionary):
        if self.settings.aux_coef > 0:
            return self.lib.losses.top_k_auxiliary_loss(x, x_hat, pre_codes, codes, dictionary,
                                                        penalty=self.settings.aux_coef)
        return (x - x_hat).square().mean()

    def train(self, batches):
        gpu = self.settings.device.type == "cuda"
        fit = self.lib.train.train_sae_amp if gpu else self.lib.train_sae
        fit(self.sae, list(batches), self.criterion, self.opt, nb_epochs=1, monitoring=0,
            device=self.settings.device.type)

    @torch.no_grad()
    def reconstruct(self, xb):
        self.sae.eval()  # fuses the (normalised) dictionary
        _, z, x_hat = self.sae(xb)
        return x_hat.float(), (z > 0).any(0)

    def decoder_rows(self):
        self.sae.eval()
        return self.sae.get_dictionary().detach()


CLASSES = {"difflens": DifflensSAE, "sparsify": SparsifySAE, "overcomplete": OvercompleteSAE}
