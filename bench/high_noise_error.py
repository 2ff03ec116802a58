"""Does a shapes model denoise better than the data mean at high noise? (where a caption's layout matters most)

    python bench/high_noise_error.py resources/shapes_model [other model folders ...] --timesteps 700 900

For each model folder and timestep, prints one JSON line: the model's held-out noise error (mean squared error of
its predicted noise, with the true caption, over the first ``--images`` test images and one seeded noise draw) and
the error of the trivial denoiser that takes x0 to be the mean training image. A model above the baseline predicts
worse than knowing nothing about the image, so whatever its caption tells it is lost at that noise level.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from difflens.data.common import Dataset  # noqa: E402
from difflens.models import load_model  # noqa: E402
from difflens.train.shapes import load_pixels  # noqa: E402


def errors(model, test: torch.Tensor, captions: list[str], train_mean: torch.Tensor, t: int, seed: int,
           batch: int = 64) -> dict:
    x0 = model.encode_images(test)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x_t = model.add_noise(x0, noise, torch.full((len(x0),), t))
    cond = model.encode_text(captions)
    pred = torch.cat([model.denoise(x_t[i:i + batch], t, cond[i:i + batch]) for i in range(0, len(x0), batch)])
    a = model.alphas_cumprod[t].float()
    baseline = (x_t - a.sqrt() * model.encode_images(train_mean)) / (1 - a).sqrt()
    return {"model": float(((pred - noise) ** 2).mean()), "data_mean": float(((baseline - noise) ** 2).mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--dataset", type=Path, default=Path("results/data/shapes"))
    ap.add_argument("--timesteps", type=int, nargs="+", default=[700, 900])
    ap.add_argument("--images", type=int, default=256, help="held-out test images scored")
    ap.add_argument("--mean-images", type=int, default=2000, help="training images averaged for the baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = Dataset.load(args.dataset)
    test, captions, _ = load_pixels(ds, "test", args.images)
    train_mean = load_pixels(ds, "train", args.mean_images)[0].mean(0, keepdim=True)
    for folder in args.models:
        model = load_model("shapes", str(folder))
        for t in args.timesteps:
            err = errors(model, test, captions, train_mean, t, args.seed)
            print(json.dumps({"model": str(folder), "prediction_type": model.prediction_type, "t": t,
                              "noise_error": round(err["model"], 6), "data_mean_error": round(err["data_mean"], 6)}))


if __name__ == "__main__":
    main()
