"""Score a shapes-model training checkpoint (``train_state.pt``) while it trains: i^s caption tests + caption gap.

    python bench/shapes_checkpoint.py results/models/shapes/train_work/train_state.pt --scenes 48 --draws 16

Pause the trainer first (``kill -STOP``; ``kill -CONT`` after): two torch processes on a small CPU slow both a lot.
Prints one JSON line: the step, the last 50 training losses' mean, the share of held-out two-object scenes where i^s
prefers the true caption over its relation swap and over its attribute swap (truncated-logistic log-SNR draws, loc 0,
scale 2, clip 3, as the check_model rule), the held-out denoising error with the caption, the empty prompt and the
relation swap at three timesteps, and how far the swap moves the prediction relative to how far the caption does.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from difflens.data.common import Dataset  # noqa: E402
from difflens.data.shapes import choice_prompts, heldout_scenes, render  # noqa: E402
from difflens.info.estimators import LogSNRSampler, information_scores  # noqa: E402
from difflens.models import load_model  # noqa: E402
from difflens.models.shapes_arch import ShapesArch, build_model, save_model  # noqa: E402
from difflens.train.shapes import training_words  # noqa: E402


def checkpoint_model(state: dict, dataset_dir: Path, arch: ShapesArch, out_dir: Path):
    """The checkpoint's weights saved as a model folder and loaded through the model layer."""
    ds = Dataset.load(dataset_dir)
    tok, text, unet, sched = build_model(training_words(list(ds.split("train")["caption"])), arch, 0)
    unet.load_state_dict(state["unet"])
    text.load_state_dict(state["text_encoder"])
    card = {"kind": "shapes", "classes": ds.classes, "train_config": {"arch": {
        "image_size": arch.image_size, "space_to_depth": arch.space_to_depth}}}
    save_model(out_dir, tok, text.eval(), unet.eval(), sched, card)
    return load_model("shapes", str(out_dir))


def scene_latents(model, scenes: list[tuple[int, dict]]) -> torch.Tensor:
    """Latents (B, C, h, w) of ``heldout_scenes``' (index, scene) pairs rendered at the model's resolution."""
    pixels = torch.from_numpy(np.stack([render(s, model.resolution)[0] for _, s in scenes]))
    return model.encode_images(pixels.permute(0, 3, 1, 2) / 127.5 - 1)


def score(model, n_scenes: int, n_draws: int) -> dict:
    scenes = heldout_scenes(n_scenes)
    latents = scene_latents(model, scenes)
    pairs = {kind: choice_prompts(scenes, kind) for kind in ("relation", "attribute")}
    out = {}
    for kind, prompts in pairs.items():
        sc = information_scores(model, latents, prompts, n_draws=n_draws, sampler=LogSNRSampler(0.0, 2.0, 3.0),
                                sample_keys=[i for i, _ in scenes])
        out[kind] = round(float(np.mean(sc.i_s[:, 0] > sc.i_s[:, 1])), 3)
    prompts = {"caption": [true for true, _ in pairs["relation"]], "empty": [""] * len(scenes),
               "relation_swap": [negative for _, negative in pairs["relation"]]}
    gen = torch.Generator().manual_seed(0)
    for t in (100, 400, 800):
        eps = torch.randn(latents.shape, generator=gen)
        x_t = model.add_noise(latents, eps, torch.full((len(latents),), t))
        pred = {name: model.denoise(x_t, t, model.encode_text(p)) for name, p in prompts.items()}
        out[f"error_t{t}"] = {name: round(float(((p - eps) ** 2).mean()), 5) for name, p in pred.items()}
        # how far the relation swap moves the prediction, relative to how far the caption moves it from the empty
        # prompt: ~0 means the denoiser reads its caption as a bag of words
        out[f"swap_vs_caption_t{t}"] = round(float(((pred["caption"] - pred["relation_swap"]) ** 2).mean()
                                                   / ((pred["caption"] - pred["empty"]) ** 2).mean()), 4)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("state", type=Path)
    ap.add_argument("--dataset", type=Path, default=Path("results/data/shapes"))
    ap.add_argument("--scenes", type=int, default=48)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--arch", default=None, help="ShapesArch fields as JSON, for states saved without them")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    state = torch.load(args.state, weights_only=False)
    fields = state.get("arch") or (json.loads(args.arch) if args.arch else None)
    if fields is None:
        sys.exit(f"{args.state}: no architecture stored in this state; pass --arch '{{...ShapesArch fields...}}'")
    arch = ShapesArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    with tempfile.TemporaryDirectory() as tmp:
        model = checkpoint_model(state, args.dataset, arch, Path(tmp) / "model")
        result = {"step": state["step"], "loss_50": round(float(np.mean(state["history"][-50:])), 5),
                  **score(model, args.scenes, args.draws)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
