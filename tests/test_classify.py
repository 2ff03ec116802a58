"""The classify stage: Diff-C (seeded, resumable, selected on val), linear probes, AUROC and PCA views, on
synthetic maps whose answers are known."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from difflens.classify import diffc
from difflens.classify.diffc import DiffC, DiffCSettings, TensorSource, train_diffc
from difflens.classify.pca import pca_rgb, save_pca_figure
from difflens.classify.probe import auroc, fit_probe

SPLIT_ROWS = {"train": 192, "val": 96, "test": 192}
FAST = DiffCSettings(epochs=3, lr=1e-3, width=32, batch_size=16)


pytestmark = pytest.mark.usefixtures("two_threads")


def quadrant_maps(n: int, seed: int, channels: int = 4, size: int = 8, bump: float = 1.0):
    """Noise maps (n, C, size, size) whose class 0..3 is the quadrant carrying +``bump`` in every channel: every
    class has the same spatial mean, so pooling cannot see the class but a conv net can."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 4, (n,), generator=gen)
    maps = torch.randn(n, channels, size, size, generator=gen)
    h = size // 2
    for i, q in enumerate(targets.tolist()):
        r, c = divmod(q, 2)
        maps[i, :, r * h:(r + 1) * h, c * h:(c + 1) * h] += bump
    return maps, targets


def quadrant_source(rows: dict[str, int] = SPLIT_ROWS, **kw) -> TensorSource:
    data = {split: quadrant_maps(n, seed, **kw) for seed, (split, n) in enumerate(rows.items())}
    return TensorSource({s: m for s, (m, _) in data.items()}, {s: t for s, (_, t) in data.items()})


def pooled(source: TensorSource) -> list[torch.Tensor]:
    """(x_train, y_train, x_val, y_val, x_test, y_test) with x the spatial means of the maps."""
    return [z for s in ("train", "val", "test") for z in (source.maps[s].mean((2, 3)), source.targets[s])]


# ---- Diff-C -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [4, 7, 16])
def test_diffc_takes_any_map_size(size):
    """4x4 maps shrink 4 -> 2 -> 1 -> 1; logits are (b, n_classes) for every size, C = 5 -> 3 classes."""
    model = DiffC(5, 3, width=8).train()
    assert model(torch.randn(2, 5, size, size)).shape == (2, 3)
    assert not model.norm.affine and len(model.features) == 4
    assert [m[0].stride for m in model.features] == [(1, 1)] + [(2, 2)] * 3


def test_diffc_reads_the_quadrant_that_pooling_cannot():
    """Class = the quadrant of a bump: Diff-C (width 32, 3 epochs) >= 0.9 test accuracy; a linear probe on spatial
    means < 0.5 with 4 classes (chance 0.25)."""
    source = quadrant_source()
    result = train_diffc(source, 4, FAST, progress=False)
    assert result["test_accuracy"] >= 0.9, result
    assert (result["n_train"], result["n_val"], result["n_test"], result["epochs"]) == (192, 96, 192, 3)
    assert [c["epoch"] for c in result["curves"]] == [1, 2, 3]
    best = max(c["val_accuracy"] for c in result["curves"])
    assert result["val_accuracy"] == best
    assert result["best_epoch"] == next(c["epoch"] for c in result["curves"] if c["val_accuracy"] == best)
    probe = fit_probe(*pooled(source))
    assert probe["test_accuracy"] < 0.5 and probe["val_accuracy"] < 0.5, probe


def test_diffc_selects_on_val_and_reads_test_once(monkeypatch):
    """Scripted val accuracies 0.5, 0.9, 0.7, 0.9: epoch 2 is kept (the tie with epoch 4 goes to the earlier), and
    the test split is read once, after the last epoch, by the model of epoch 2 (not the last one)."""
    val_script = iter([0.5, 0.9, 0.7, 0.9])
    calls = []

    def scripted(heads, source, split, batch_size, device, n_classes):
        calls.append((split, [p.detach().clone() for p in heads[0].model.parameters()]))
        return {"": 0.25 if split == "test" else next(val_script)}

    monkeypatch.setattr(diffc, "_accuracies", scripted)
    settings = DiffCSettings(epochs=4, lr=1e-3, width=8, batch_size=16)
    result = train_diffc(quadrant_source({"train": 32, "val": 8, "test": 8}), 4, settings, progress=False)
    assert [split for split, _ in calls] == ["val"] * 4 + ["test"]
    assert (result["best_epoch"], result["val_accuracy"], result["test_accuracy"]) == (2, 0.9, 0.25)
    at_test, at_epoch2, at_epoch4 = calls[4][1], calls[1][1], calls[3][1]
    assert all(torch.equal(a, b) for a, b in zip(at_test, at_epoch2))
    assert not all(torch.equal(a, b) for a, b in zip(at_test, at_epoch4))


def test_diffc_resumes_to_the_same_numbers(tmp_path):
    """2 epochs, then resumed to 4 from the checkpoint == a straight 4-epoch run: curves, accuracies and best epoch
    exactly equal on the CPU; a finished run called again returns them without training."""
    source = quadrant_source({"train": 48, "val": 16, "test": 16})
    settings = DiffCSettings(epochs=4, lr=1e-3, width=16, batch_size=16, seed=3)
    straight = train_diffc(source, 4, settings, progress=False)
    work = tmp_path / "work"
    first = train_diffc(source, 4, DiffCSettings(**{**vars(settings), "epochs": 2}), work_dir=work, progress=False)
    assert first["curves"] == straight["curves"][:2]
    resumed = train_diffc(source, 4, settings, work_dir=work, progress=False)
    keys = ("curves", "val_accuracy", "test_accuracy", "best_epoch", "epochs")
    assert {k: resumed[k] for k in keys} == {k: straight[k] for k in keys}
    assert sorted(p.name for p in work.iterdir()) == [diffc.CHECKPOINT]
    again = train_diffc(source, 4, settings, work_dir=work, progress=False)
    assert {k: again[k] for k in keys} == {k: straight[k] for k in keys}


def two_heads(rows=None) -> diffc.HeadSources:
    """Two heads over the same rows and targets: the quadrant maps at 8 x 8 with 4 channels, and at 4 x 4 with 6
    (bump 0.5), each split seeded as ``quadrant_source``."""
    rows = rows or {"train": 48, "val": 16, "test": 16}
    a = quadrant_source(rows)
    small = {s: quadrant_maps(n, seed, channels=6, size=4, bump=0.5) for seed, (s, n) in enumerate(rows.items())}
    b = TensorSource({s: m for s, (m, _) in small.items()}, {s: t for s, (_, t) in small.items()})
    return diffc.HeadSources({"big": a, "small": b})


def test_heads_train_as_each_would_alone(tmp_path):
    """Two heads trained together (dropout on) == each trained alone: curves, accuracies and best epochs exactly
    equal on the CPU; a 2-epoch multi-head run resumed to 4 == the straight run."""
    heads = two_heads()
    settings = DiffCSettings(epochs=4, lr=1e-3, width=16, batch_size=16, dropout=0.5, seed=5)
    together = diffc.train_diffc_heads(heads, 4, settings, progress=False)
    keys = ("curves", "val_accuracy", "test_accuracy", "best_epoch")
    for name, source in heads.sources.items():
        alone = train_diffc(source, 4, settings, progress=False)
        assert {k: together[name][k] for k in keys} == {k: alone[k] for k in keys}, name
    assert together["big"]["curves"] != together["small"]["curves"]
    work = tmp_path / "work"
    diffc.train_diffc_heads(heads, 4, DiffCSettings(**{**vars(settings), "epochs": 2}), work_dir=work,
                            progress=False)
    resumed = diffc.train_diffc_heads(heads, 4, settings, work_dir=work, progress=False)
    assert {h: {k: resumed[h][k] for k in keys} for h in resumed} == \
        {h: {k: together[h][k] for k in keys} for h in together}
    with pytest.raises(ValueError, match=r"heads \['big', 'small'\], not \['big'\]"):
        diffc.train_diffc_heads(diffc.HeadSources({"big": heads.sources["big"]}), 4, settings, work_dir=work,
                                progress=False)


def test_heads_must_share_their_rows():
    heads = two_heads()
    other = quadrant_source({"train": 40, "val": 16, "test": 16})
    with pytest.raises(ValueError, match="head 'other' has rows"):
        diffc.HeadSources({**heads.sources, "other": other})
    shuffled = quadrant_source({"train": 48, "val": 16, "test": 16})
    shuffled.targets["val"] = shuffled.targets["val"].roll(1)
    with pytest.raises(ValueError, match="other targets"):
        list(diffc.HeadSources({"a": heads.sources["big"], "b": shuffled}).batches("val", 8, epoch=0, train=False))


def test_diffc_refuses_a_checkpoint_of_other_settings(tmp_path):
    """lr 1e-3 saved, 1e-2 asked: ValueError naming the work_dir and lr; 1 epoch saved with 2 asked for is fine,
    but a 2-epoch state resumed with epochs=1 is refused."""
    source = quadrant_source({"train": 16, "val": 8, "test": 8})
    settings = DiffCSettings(epochs=2, lr=1e-3, width=8, batch_size=8)
    train_diffc(source, 4, settings, work_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=rf"{tmp_path}.*lr: 0\.001 there, 0\.01 here"):
        train_diffc(source, 4, DiffCSettings(**{**vars(settings), "lr": 1e-2}), work_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="2 epochs, more than the 1 asked for"):
        train_diffc(source, 4, DiffCSettings(**{**vars(settings), "epochs": 1}), work_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="n_classes: 4 there, 5 here"):
        train_diffc(source, 5, settings, work_dir=tmp_path, progress=False)


def test_diffc_trains_on_a_last_batch_of_one_row():
    """17 train rows of 4x4 maps in batches of 16: the lone 17th row joins the batch before it (one batch of 17),
    since BatchNorm on a 1x1 map cannot train on one row; the epoch then runs."""
    source = quadrant_source({"train": 17, "val": 4, "test": 4}, size=4)
    batches = diffc._no_single_rows(diffc._OneHead(source).batches("train", 16, epoch=0, train=True))
    assert [len(t) for _, t in batches] == [17]
    result = train_diffc(source, 4, DiffCSettings(epochs=1, width=8, batch_size=16), progress=False)
    assert len(result["curves"]) == 1


def test_tensor_source_batches():
    """Eval batches come in row order; train batches are a permutation fixed by (seed, epoch)."""
    source = quadrant_source({"train": 10, "val": 4, "test": 4})
    targets = source.targets["train"]
    assert torch.equal(torch.cat([t for _, t in source.batches("train", 3, epoch=0, train=False)]), targets)
    order = [torch.cat([t for _, t in source.batches("train", 3, epoch=e, train=True)]) for e in (0, 0, 1)]
    assert torch.equal(order[0], order[1]) and sorted(order[0].tolist()) == sorted(targets.tolist())
    maps = [torch.cat([m for m, _ in source.batches("train", 4, epoch=e, train=True)]) for e in (0, 1)]
    assert not torch.equal(maps[0], maps[1])
    assert source.channels == 4 and source.map_size == (8, 8) and source.n("val") == 4


@pytest.mark.parametrize("case, match", [
    ("one_class", r"train split holds 1 class\(es\) \(\[2\]\)"),
    ("empty_val", r"empty split\(s\) \['val'\]"),
    ("few_classes", "a train target is 3 but n_classes is 3"),
    ("one_class_asked", "n_classes must be >= 2, got 1"),
])
def test_diffc_bad_input(case, match):
    """Each bad input is one ValueError that names it."""
    source = quadrant_source({"train": 8, "val": 4, "test": 4})
    source.targets["train"] = torch.full((8,), 2) if case == "one_class" else torch.tensor([0, 1, 2, 3] * 2)
    if case == "empty_val":
        source.maps["val"], source.targets["val"] = source.maps["val"][:0], source.targets["val"][:0]
    n_classes = {"few_classes": 3, "one_class_asked": 1}.get(case, 4)
    with pytest.raises(ValueError, match=match):
        train_diffc(source, n_classes, DiffCSettings(epochs=1, width=4, batch_size=4), progress=False)


def test_diffc_settings_and_sources_check_their_values():
    with pytest.raises(ValueError, match=r"batch_size=1, dropout=1\.0 out of range"):
        DiffCSettings(batch_size=1, dropout=1.0)
    with pytest.raises(ValueError, match="targets\\['train'\\] must be 3 integers"):
        TensorSource({"train": torch.zeros(3, 2, 4, 4)}, {"train": torch.zeros(3)})
    with pytest.raises(ValueError, match="no split 'val'"):
        TensorSource({"train": torch.zeros(3, 2, 4, 4)}, {"train": torch.zeros(3, dtype=torch.long)}).n("val")


# ---- probe and AUROC ----------------------------------------------------------------------------------------------
def test_probe_reads_a_linear_class():
    """Class k (of 4) shifts feature k (of 6) by +2 (noise sd 1): the probe's test accuracy is within 0.03 of the
    Bayes rule's (arg-max of features 0-3, about 0.8), its L2 is the first best of val_by_l2, and the features are
    standardised with train statistics (scaling all of them by 1000 changes no val accuracy)."""
    gen = torch.Generator().manual_seed(0)
    splits = []
    for n in (300, 150, 300):
        y = torch.randint(0, 4, (n,), generator=gen)
        splits += [torch.randn(n, 6, generator=gen) + 2.0 * torch.nn.functional.one_hot(y, 6), y]
    result = fit_probe(*splits)
    bayes = float((splits[4][:, :4].argmax(1) == splits[5]).double().mean())
    assert bayes > 0.75 and result["test_accuracy"] >= bayes - 0.03, (bayes, result)
    assert (result["n_train"], result["n_val"], result["n_test"], result["n_classes"]) == (300, 150, 300, 4)
    vals = [r["val_accuracy"] for r in result["val_by_l2"]]
    assert result["l2"] == result["val_by_l2"][vals.index(max(vals))]["l2"] and result["val_accuracy"] == max(vals)
    scaled = fit_probe(*[z * 1000 if z.is_floating_point() else z for z in splits])
    assert scaled["val_by_l2"] == pytest.approx(result["val_by_l2"])


def test_probe_table_codes_a_value_alike_in_every_split_and_warns_of_a_dropped_target(caplog):
    """Features that are the one-hot colour, the test split all red: red's code is the one train gives it (test
    accuracy 1; a coding per split would call it blue); ``single`` has one class in train: no row, a warning."""
    import logging

    import pandas as pd

    from difflens.classify.tables import probe_split_rows

    colours = {"train": ["blue", "green", "red"] * 4, "val": ["green", "red"] * 2, "test": ["red"] * 3}
    rows = {s: pd.DataFrame({"colour": c, "single": "x"}) for s, c in colours.items()}
    code = {"blue": 0, "green": 1, "red": 2}
    feats = {s: np.eye(3, dtype=np.float32)[[code[c] for c in cs]] for s, cs in colours.items()}
    meta = {"model": "m", "dataset": "d", "layer": "l", "timestep": 5}
    with caplog.at_level(logging.WARNING, logger="difflens.classify.tables"):
        out = probe_split_rows(feats, rows, ["colour", "single"], meta)
    assert [(r["target"], r["test_accuracy"], r["n_classes"]) for r in out] == [("colour", 1.0, 3)]
    assert [r.getMessage() for r in caplog.records] == [
        "m d l 5: target 'single' has one class in train or an empty split (rows {'train': 12, 'val': 4, "
        "'test': 3}); no probe"]


@pytest.mark.parametrize("case, match", [
    ("one_class", r"train split holds 1 class"), ("empty_test", "the test split is empty"),
    ("widths", "feature widths differ: train 3, val 2"), ("negative", "labels must be integers >= 0"),
])
def test_probe_bad_input(case, match):
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 2, 2])
    args = [x, y, x, y, x, y]
    if case == "one_class":
        args[1] = torch.zeros(6, dtype=torch.long)
    if case == "empty_test":
        args[4], args[5] = x[:0], y[:0]
    if case == "widths":
        args[2] = x[:, :2]
    if case == "negative":
        args[3] = y - 1
    with pytest.raises(ValueError, match=match):
        fit_probe(*args)


def test_auroc_with_ties_by_hand():
    """Positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4: pairs won 1+0, 1+1, 1+0.5 (a tie is 1/2) = 4.5 of 6."""
    assert auroc([0.1, 0.4, 0.35, 0.8, 0.4], [0, 0, 1, 1, 1]) == 0.75
    assert auroc(np.array([1.0, 2.0, 3.0]), np.array([False, True, True])) == 1.0
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0, 1, 1])) == 0.0
    assert auroc([5.0] * 4, [0, 1, 0, 1]) == 0.5


@pytest.mark.parametrize("scores, labels, match", [
    ([0.1, 0.2], [1, 1], "0 negative"), ([0.1, 0.2], [0, 2], "labels must be 0 or 1, got \\[2\\]"),
    ([0.1, float("nan")], [0, 1], "1 scores are not finite"), ([0.1], [0, 1], "1-D of one length"),
])
def test_auroc_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        auroc(scores, labels)


# ---- PCA views ----------------------------------------------------------------------------------------------------
def three_directions(n: int = 6, channels: int = 8, size: int = 8):
    """Maps built from 3 orthonormal channel directions whose coefficient maps are uniform draws made exactly
    uncorrelated over the set, with standard deviations 3, 2, 1, plus a constant 5 and noise of sd 0.01:
    (maps, directions (C, 3), coefficients (n, 3, H, W))."""
    gen = torch.Generator().manual_seed(0)
    directions, _ = torch.linalg.qr(torch.randn(channels, 3, generator=gen))
    draws = torch.rand(n * size * size, 3, generator=gen)
    uncorrelated, _ = torch.linalg.qr(draws - draws.mean(0))
    coef = uncorrelated * len(draws) ** 0.5 * torch.tensor([3.0, 2.0, 1.0])
    coef = coef.reshape(n, size, size, 3).permute(0, 3, 1, 2)
    maps = torch.einsum("ck,nkhw->nchw", directions, coef)
    return maps + 5.0 + 0.01 * torch.randn(maps.shape, generator=gen), directions, coef


def signed(directions: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """The coefficient maps with the sign PCA gives them: that of the direction's largest-magnitude loading."""
    signs = torch.sign(directions[directions.abs().argmax(0), torch.arange(3)])
    return coef * signs.view(1, 3, 1, 1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_pca_rgb_recovers_three_directions():
    """Each RGB channel correlates > 0.99 with one coefficient map (the best channel order is the variance order),
    with the sign that makes the direction's largest loading positive; values span [0, 1]; deterministic."""
    maps, directions, coef = three_directions()
    expected = signed(directions, coef)
    rgb = pca_rgb(maps)
    assert rgb.shape == (6, 3, 8, 8) and rgb.dtype == torch.float32
    assert float(rgb.min()) == 0.0 and float(rgb.max()) == 1.0
    best = max(itertools.permutations(range(3)),
               key=lambda p: sum(correlation(rgb[:, i], expected[:, p[i]]) for i in range(3)))
    assert best == (0, 1, 2)
    assert all(correlation(rgb[:, i], expected[:, i]) > 0.99 for i in range(3))
    assert torch.equal(rgb, pca_rgb(maps))


def test_pca_rgb_fits_on_the_first_n_fit_images():
    """6 images of 3 directions, then 6 whose variance (sd 100) lies along a 4th, orthogonal one: with n_fit=6 the
    first 6 views still correlate > 0.99 with their coefficients; fitted on all 12, the first channel follows the
    4th direction and its correlation with the first coefficient map drops below 0.5."""
    maps, directions, coef = three_directions()
    expected = signed(directions, coef)
    gen = torch.Generator().manual_seed(1)
    fourth = torch.linalg.qr(torch.cat([directions, torch.randn(8, 1, generator=gen)], 1))[0][:, 3]
    loud = 5.0 + 100 * torch.einsum("c,nhw->nchw", fourth, torch.randn(6, 8, 8, generator=gen))
    fitted = pca_rgb(torch.cat([maps, loud]), n_fit=6)[:6]
    assert all(correlation(fitted[:, i], expected[:, i]) > 0.99 for i in range(3))
    assert abs(correlation(pca_rgb(torch.cat([maps, loud]))[:6, 0], expected[:, 0])) < 0.5


def test_pca_rgb_bad_input():
    with pytest.raises(ValueError, match=r"C >= 3, got \(2, 2, 4, 4\)"):
        pca_rgb(torch.zeros(2, 2, 4, 4))


def test_save_pca_figure_writes_a_png(tmp_path):
    """5 images of 16 px with 4x4 PCA views, 3 pairs a row: a PNG of 2 rows at 100 dpi, 3 x 2 x 1.6 in wide and
    2 x 1.8 in tall plus 0.4 in for the title."""
    from PIL import Image

    maps, _, _ = three_directions(n=5, size=4)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = save_pca_figure(images, pca_rgb(maps), tmp_path / "fig" / "pca.png", cols=3,
                           titles=[f"class {i}" for i in range(5)], title="up_blocks.1, t = 25")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(path).size == (960, 400)
    with pytest.raises(ValueError, match=r"pca must be \(5, 3, h, w\)"):
        save_pca_figure(images, pca_rgb(maps)[:4], tmp_path / "bad.png")
