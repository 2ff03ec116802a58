"""Information-theoretic scores from denoising errors (Kong et al., ICLR 2024), in nats.

For an image x (model latents), a prompt y and a base prompt b (the empty prompt for mutual information, the
caption's context c for conditional information), with eps_hat(. | p) the denoiser's noise prediction:

* ``i_s(x; y | b) = 1/2 Int E_eps[ ||eps - eps_hat(x_a | b)||^2 - ||eps - eps_hat(x_a | y)||^2 ] da``
* ``i_o(x; y | b) = 1/2 Int E_eps[ ||eps_hat(x_a | b) - eps_hat(x_a | y)||^2 ] da`` (>= 0, lower variance)
* ``err(x; y)     = 1/2 Int E_eps[ ||eps - eps_hat(x_a | y)||^2 ] da``: the denoising error (DiffITM-style score)

Pixel-wise versions replace the squared norm by the per-pixel square summed over channels; a map sums to its total.

**Draws.** The integral over log-SNR ``a`` is estimated by importance sampling from a logistic(loc, scale)
truncated to ``loc +- clip * scale``, weight ``w(a) = 1 / q(a) = scale tanh(clip / 2) / (sigmoid(u) sigmoid(-u))``
with ``u = (a - loc) / scale``. ``stratified`` replaces the independent uniforms behind the draws by the quantile
grid ``(j + s) / n`` with one random shift ``s`` per item (same proposal, same weights, lower variance). Draw ``j``
of item ``k`` takes its uniform and its noise from a generator seeded by ``(seed, "info", k, j)`` (the extraction
stage's scheme), so scores never depend on batch size, shard or order, and plain and stratified runs share eps.

**Noise where the model was trained.** A draw ``a`` is denoised at the model's timestep whose log-SNR ``a_t`` is
nearest, and the image is noised at ``a_t`` itself (its weight stays ``w(a)``): the estimate is then the integral
of a step function that agrees with the integrand at every trained noise level, and coarsening the timestep grid
barely moves it. (Noising at ``a`` and denoising at ``t`` would show the denoiser noise levels it was not trained
for, up to 0.4-0.7 apart in log-SNR near the top of Stable Diffusion's range; ``noise_at="draw"`` keeps that
behaviour for comparison.)

**Batching.** Every prompt an image needs (captions, negatives, contexts and the base prompts) runs once per draw,
all in one denoiser batch: the base prompt's prediction is shared by every pair that uses it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..seeding import derive_seed
from ..models.batching import HalvingBatcher
from ..models.catalog import CLASS_KINDS, TEXT_KINDS, ModelConfigError

#: the configuration keys of the proposal (named by range errors)
PROPOSAL_KEYS = ("infodecomp.loc", "infodecomp.scale", "infodecomp.clip")


@dataclass(frozen=True)
class LogSNRSampler:
    """Truncated-logistic proposal of log-SNR values and their importance weights (plain or stratified)."""

    loc: float = 1.0
    scale: float = 2.0
    clip: float = 3.0
    stratified: bool = False

    def __post_init__(self):
        if not self.scale > 0 or not self.clip > 0:
            raise ModelConfigError(f"log-SNR proposal: scale ({self.scale}) and clip ({self.clip}) must be > 0 "
                                   f"(config keys {', '.join(PROPOSAL_KEYS)})")

    @property
    def interval(self) -> tuple[float, float]:
        """The truncation interval [loc - clip scale, loc + clip scale]."""
        return self.loc - self.clip * self.scale, self.loc + self.clip * self.scale

    def logsnr(self, p: torch.Tensor) -> torch.Tensor:
        """The proposal's quantile function: uniforms ``p`` in [0, 1] (float64) -> log-SNR values."""
        lo, hi = torch.sigmoid(torch.tensor(-self.clip, dtype=torch.float64)), \
            torch.sigmoid(torch.tensor(self.clip, dtype=torch.float64))
        q = lo + (hi - lo) * p.to(torch.float64)
        return self.loc + self.scale * (torch.log(q) - torch.log1p(-q))

    def weight(self, a: torch.Tensor) -> torch.Tensor:
        """1 / q(a), float64."""
        u = (a.to(torch.float64) - self.loc) / self.scale
        return self.scale * np.tanh(self.clip / 2) / (torch.sigmoid(u) * torch.sigmoid(-u))

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` independent draws from one generator: (a, w), float64."""
        a = self.logsnr(torch.rand(n, generator=generator, dtype=torch.float64))
        return a, self.weight(a)

    def item_draws(self, n: int, shape: tuple[int, ...], seed: int, item,
                   first: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a (n,), w (n,), eps (n, *shape)) of one item: draws ``first .. first + n - 1``, draw ``j`` seeded by
        ``(seed, "info", item, j)``, so that independent draws nest (the first 50 of 100 are the 50-draw estimate's).
        Stratified draws do not nest (their grid depends on ``n``): ``first`` > 0 is refused for them."""
        if self.stratified and first:
            raise ValueError(f"stratified draws do not nest: draws from {first} on are not the continuation of the "
                             f"first {first} (infodecomp.stratified: false for nested draw counts)")
        p = torch.empty(n, dtype=torch.float64)
        eps = torch.empty((n, *shape))
        gen = torch.Generator()
        for k, j in enumerate(range(first, first + n)):
            gen.manual_seed(derive_seed(int(seed), "info", item, j))
            p[k] = torch.rand(1, generator=gen, dtype=torch.float64)
            eps[k] = torch.randn(shape, generator=gen)
        if self.stratified:
            gen.manual_seed(derive_seed(int(seed), "info-shift", item))
            shift = torch.rand(1, generator=gen, dtype=torch.float64)
            p = (torch.arange(n, dtype=torch.float64) + shift) / n
        a = self.logsnr(p)
        return a, self.weight(a), eps

    def check_range(self, log_snr_range: tuple[float, float], model: str = "the model") -> None:
        """Raise ModelConfigError (naming the config keys and the range) when the interval leaves the trained
        log-SNR range: the denoiser was never trained on the noise levels outside it."""
        lo, hi = self.interval
        mn, mx = log_snr_range
        if lo < mn - 1e-6 or hi > mx + 1e-6:
            raise ModelConfigError(
                f"config keys {', '.join(PROPOSAL_KEYS)} = {self.loc}, {self.scale}, {self.clip} give log-SNR draws "
                f"in [{lo:.2f}, {hi:.2f}], outside the range {mn:.2f} .. {mx:.2f} that {model} was trained on; "
                f"lower clip or scale, or move loc")


@dataclass
class ItemScores:
    """One image's estimates for each (prompt, base) pair, nats: means over draws and per-draw values.

    ``per_draw[name]`` (n_draws, n_pairs) for name in i_s, i_o, err; ``maps[name]`` (n_pairs, h, w) pixel-wise
    means (with ``pixelwise``); ``attention`` the recorder's per-layer maps of the attention prompt's rows.
    """

    pairs: list[tuple[str, str]]
    per_draw: dict[str, np.ndarray]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    attention: dict[str, torch.Tensor] | None = None

    def mean(self, name: str) -> np.ndarray:
        return self.per_draw[name].mean(0)

    def stderr(self, name: str) -> np.ndarray:
        """Standard error over draws (independent draws; stratified draws have less error than this says)."""
        d = self.per_draw[name]
        return d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.full(d.shape[1:], np.nan)


def require_unconditional(model) -> None:
    """Information needs a model whose empty prompt is its unconditional branch: a text model (caption dropout) or a
    class-conditional one (the null class)."""
    if getattr(model, "kind", "text") not in (*TEXT_KINDS, *CLASS_KINDS, "text"):
        raise ModelConfigError(f"{model.kind} model {getattr(model, 'source', '')!r} has no conditional denoiser "
                               f"with an empty-prompt (unconditional) branch; the information estimators need one "
                               f"(kinds {list(TEXT_KINDS + CLASS_KINDS)})")


def require_text(model, task: str) -> None:
    """``task`` scores captions or words: a class-conditional model (conditions are class labels) is refused."""
    require_unconditional(model)
    if getattr(model, "kind", "text") in CLASS_KINDS:
        raise ModelConfigError(f"{model.kind} model {getattr(model, 'source', '')!r} is class-conditional: {task} "
                               f"needs captions (a text model: kinds {list(TEXT_KINDS)}); its information stage is "
                               f"the class-label localization (infodecomp.localize)")


#: batch_size -> the size an out-of-memory error backed it off to in this process, so later items start there
_BACKED_OFF: dict[int, int] = {}


def run_in_batches(batch_size: int, n: int, fn) -> list:
    """``fn(a, b)`` over ``[0, n)`` in denoiser batches of ``batch_size`` rows (infodecomp.batch_size), halved on
    out of memory (models.batching); later calls of this process start at the size it was backed off to."""
    batcher = HalvingBatcher(_BACKED_OFF.get(batch_size, batch_size), "denoiser rows", "infodecomp.batch_size")
    try:
        return batcher.run(n, fn)
    finally:
        _BACKED_OFF[batch_size] = batcher.size


def recorded(recorder, call):
    """``call()`` with what ``recorder`` (a cross-attention recorder, or None) holds restored when it raises (an out
    of memory error part-way through a batch: the batch is retried smaller and must not be counted twice)."""
    kept = None if recorder is None else ({k: v.clone() for k, v in recorder.maps.items()}, dict(recorder.calls))
    try:
        return call()
    except RuntimeError:
        if kept is not None:
            recorder.maps.clear()
            recorder.maps.update(kept[0])
            recorder.calls = kept[1]
        raise


def denoise_rows(model, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, batch_size: int, recorder=None,
                 slots: torch.Tensor | None = None) -> torch.Tensor:
    """``model.denoise`` of every row (on the CPU), in batches as ``run_in_batches`` cuts them. With a ``recorder``
    (``models.attention.record_cross_attention(..., n_slots)``), row ``i``'s cross-attention is summed into slot
    ``slots[i]`` (-1: not recorded)."""
    def rows_out(a: int, b: int) -> torch.Tensor:
        if recorder is not None:
            recorder.slots = slots[a:b]
        return recorded(recorder, lambda: model.denoise(x_t[a:b], t[a:b], cond[a:b]).cpu())

    try:
        return torch.cat(run_in_batches(batch_size, len(x_t), rows_out))
    finally:
        if recorder is not None:
            recorder.slots = None


def score_item(model, x0: torch.Tensor, pairs: list[tuple[str, str]], *, n_draws: int, sampler: LogSNRSampler,
               seed: int, item, batch_size: int = 256, pixelwise: bool = False, noise_at: str = "timestep",
               recorder=None, attention_prompt: str | None = None, first_draw: int = 0) -> ItemScores:
    """Estimates of one image (latents (C, h, w)) for each ``(prompt, base)`` pair, from shared draws.

    Every distinct prompt of ``pairs`` runs once per draw, all rows in batches of ``batch_size``. With a
    cross-attention ``recorder`` (``models.attention.record_cross_attention``), the rows of ``attention_prompt``
    are recorded, summed over draws (DAAM's sum over noise levels, here the estimator's own draws). ``first_draw``:
    the draws are ``first_draw .. first_draw + n_draws - 1`` (``LogSNRSampler.item_draws``: a run continued
    from where a shorter one stopped).
    """
    if noise_at not in ("timestep", "draw"):
        raise ValueError(f"noise_at {noise_at!r} is not one of ['timestep', 'draw']")
    prompts = list(dict.fromkeys(p for pair in pairs for p in pair))
    index = {p: i for i, p in enumerate(prompts)}
    a, w, eps = sampler.item_draws(n_draws, tuple(x0.shape), seed, item, first_draw)
    t = model.timestep_for_logsnr(a)
    a_noise = model.log_snr[t] if noise_at == "timestep" else a
    x_a = model.add_noise_logsnr(x0[None].float().expand(n_draws, *x0.shape), eps, a_noise)
    cond = model.encode_text(prompts)
    m = len(prompts)
    rows = n_draws * m  # row r = draw r // m, prompt r % m
    rec_index = index.get(attention_prompt, -1)

    def rows_out(s: int, e: int) -> torch.Tensor:
        r = torch.arange(s, e)
        if recorder is not None:
            recorder.select = (r % m) == rec_index
        return recorded(recorder, lambda: model.denoise(x_a[r // m], t[r // m], cond[r % m]).cpu())

    outs = run_in_batches(batch_size, rows, rows_out)
    if recorder is not None:
        recorder.select = None
    eps_hat = torch.cat(outs).view(n_draws, m, *x0.shape)
    target = torch.tensor([index[p] for p, _ in pairs])
    base = torch.tensor([index[b] for _, b in pairs])
    err = ((eps[:, None] - eps_hat) ** 2).sum(2)  # (n, m, h, w): channels summed
    gap = ((eps_hat[:, base] - eps_hat[:, target]) ** 2).sum(2)
    half_w = (0.5 * w).to(torch.float32).view(-1, 1, 1, 1)
    pix = {"i_s": half_w * (err[:, base] - err[:, target]), "i_o": half_w * gap, "err": half_w * err[:, target]}
    per_draw = {k: v.flatten(2).sum(2).numpy() for k, v in pix.items()}
    maps = {k: v.mean(0).numpy() for k, v in pix.items()} if pixelwise else {}
    return ItemScores(pairs=list(pairs), per_draw=per_draw, maps=maps,
                      attention=dict(recorder.maps) if recorder is not None else None)


@dataclass
class Scores:
    """Per image (rows) and prompt (columns) estimates, nats; ``*_se`` are standard errors over draws."""

    i_s: np.ndarray
    i_o: np.ndarray
    mmse: np.ndarray
    i_s_se: np.ndarray
    i_o_se: np.ndarray


def information_scores(model, latents: torch.Tensor, prompts: list[list[str]], *, n_draws: int = 100,
                       sampler: LogSNRSampler = LogSNRSampler(), seed: int = 0, sample_keys: list | None = None,
                       batch_size: int = 256, progress: bool = False) -> Scores:
    """Mutual information i^s, i^o and the denoising error of each image (latents (B, C, h, w)) with each of its
    prompts (B lists of m, against the empty prompt). ``sample_keys`` (default 0..B-1) seed each image's draws."""
    from tqdm import tqdm

    keys = range(len(latents)) if sample_keys is None else sample_keys
    res = {k: [] for k in ("s", "o", "e", "s_se", "o_se")}
    for x, ps, key in tqdm(list(zip(latents, prompts, keys)), desc="information scores", disable=not progress):
        sc = score_item(model, x, [(p, "") for p in ps], n_draws=n_draws, sampler=sampler, seed=seed, item=key,
                        batch_size=batch_size)
        res["s"].append(sc.mean("i_s"))
        res["o"].append(sc.mean("i_o"))
        res["e"].append(sc.mean("err"))
        res["s_se"].append(sc.stderr("i_s"))
        res["o_se"].append(sc.stderr("i_o"))
    stack = {k: np.stack(v) for k, v in res.items()}
    return Scores(i_s=stack["s"], i_o=stack["o"], mmse=stack["e"], i_s_se=stack["s_se"], i_o_se=stack["o_se"])


def mmse_curve(model, latents: torch.Tensor, prompt: str, logsnrs: torch.Tensor, *, n_draws: int = 16,
               seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Mean squared noise-prediction error ``E ||eps - eps_hat(x_a | prompt)||^2`` (summed over latent elements)
    at each of the model's timesteps nearest to ``logsnrs``, averaged over images (B, C, h, w) and ``n_draws``
    seeded noise draws per image and level: the MMSE curve, one value per log-SNR."""
    t = model.timestep_for_logsnr(logsnrs)
    a_t = model.log_snr[t]
    cond = model.encode_text([prompt])
    out = np.zeros(len(t))
    for k, x0 in enumerate(latents):
        for i, (ti, ai) in enumerate(zip(t, a_t)):
            gen = torch.Generator().manual_seed(derive_seed(int(seed), "mmse", k, i))
            eps = torch.randn((n_draws, *x0.shape), generator=gen)
            x_a = model.add_noise_logsnr(x0[None].float().expand_as(eps), eps, ai.repeat(n_draws))
            preds = denoise_rows(model, x_a, ti.repeat(n_draws), cond.expand(n_draws, *cond.shape[1:]), batch_size)
            out[i] += float(((eps - preds) ** 2).flatten(1).sum(1).mean())
    return out / len(latents)


def sampler_for(info: dict, model=None) -> LogSNRSampler:
    """The proposal of the ``infodecomp`` config section; checked against ``model``'s trained log-SNR range."""
    sampler = LogSNRSampler(info["loc"], info["scale"], info["clip"], bool(info.get("stratified", False)))
    if model is not None:
        sampler.check_range((float(model.log_snr.min()), float(model.log_snr.max())), f"model {model.source!r}")
    return sampler


def sampler_standard_errors(values: np.ndarray, counts: list[int]) -> dict[str, dict[int, float]]:
    """Standard errors of the plain and the stratified estimator at each draw count, from one item's per-draw
    values of a fine stratified run (``values[j]`` from stratum j of N, N a multiple of every count).

    Plain: ``sigma / sqrt(n)``, sigma the spread of all N values (they cover the proposal evenly). Stratified with
    n strata: ``sqrt(sum_k s_k^2) / n``, s_k^2 the variance of the values inside coarse stratum k (N / n fine strata).
    """
    values = np.asarray(values, dtype=np.float64)
    big_n = len(values)
    out = {"plain": {}, "stratified": {}}
    sigma = values.std(ddof=1)
    for n in counts:
        if big_n % n or big_n // n < 2:
            raise ValueError(f"{big_n} fine draws do not split into {n} strata of at least 2")
        out["plain"][n] = float(sigma / np.sqrt(n))
        within = values.reshape(n, big_n // n).var(axis=1, ddof=1)
        out["stratified"][n] = float(np.sqrt(within.sum()) / n)
    return out
