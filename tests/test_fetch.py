"""Hub weights fetched once (difflens.models.fetch and the local rule download_model), with a local folder laid
out like the hub standing in for it (``hub_mirror``); nothing is downloaded. The rule's successful run, with the
extraction jobs loading the cached folder, is the test-config matrix's tiny_backbones.yaml."""
import json
from pathlib import Path

import pytest

from difflens.models import load_model
from difflens.models.fetch import MARKER, ModelFetchError, cache_folder_name, fetch_model, is_hub_id, select_files
from tiny_pipelines import build_tiny_dit, build_tiny_sd
from workflow_utils import run_snakemake

HUB_ID = "tiny-org/tiny-sd"
#: files a hub repository carries that the pipeline never loads
JUNK = ["unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
        "text_encoder/flax_model.msgpack", "v1-5-pruned-emaonly.ckpt", "safety_checker/config.json",
        "safety_checker/model.safetensors", "feature_extractor/preprocessor_config.json", "README.md"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A hub mirror holding a tiny SD pipeline plus the variants and extras a real repository has."""
    root = tmp_path_factory.mktemp("hub")
    repo = build_tiny_sd(root / HUB_ID)
    for name in JUNK:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"not for difflens")
    return root


def repo_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_select_files_takes_components_and_one_weight_format(mirror):
    files = repo_files(mirror / HUB_ID)
    chosen = select_files("sd", files)
    assert not set(chosen) & set(JUNK)
    assert "unet/diffusion_pytorch_model.safetensors" in chosen and "text_encoder/model.safetensors" in chosen
    assert {f for f in files if f.startswith(("tokenizer/", "scheduler/", "vae/"))} <= set(chosen)
    assert "model_index.json" in chosen
    assert "tokenizer/merges.txt" in select_files("sd", files + ["tokenizer/merges.txt"])  # hub CLIP vocabularies
    # a repository with only .bin weights for a component: the .bin is taken
    only_bin = [f for f in files if f != "unet/diffusion_pytorch_model.safetensors"]
    assert "unet/diffusion_pytorch_model.bin" in select_files("sd", only_bin)
    with pytest.raises(ModelFetchError, match=r"vae/ weights"):
        select_files("sd", [f for f in files if not f.startswith("vae/diffusion")])
    dit = select_files("dit", ["model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model"
                               ".safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                               "scheduler/scheduler_config.json", "unet/config.json"])
    assert not any(f.startswith("unet/") for f in dit)


def test_flux_fetch_takes_both_text_encoders_sharded_weights_and_the_fast_tokenizer():
    """FLUX.1's hub layout: T5 weights in shards with their index, the T5 tokenizer as tokenizer.json beside its
    SentencePiece model, fp16 variants beside the plain weights; the whole-pipeline checkpoint at the top level."""
    files = ["model_index.json", "flux1-schnell.safetensors", "scheduler/scheduler_config.json",
             "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/vocab.json",
             "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "text_encoder_2/config.json",
             "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
             "text_encoder_2/model.safetensors.index.json", "text_encoder_2/model.fp16.safetensors",
             "tokenizer_2/spiece.model", "tokenizer_2/tokenizer.json", "tokenizer_2/tokenizer_config.json",
             "transformer/config.json", "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
             "transformer/diffusion_pytorch_model.safetensors.index.json", "vae/config.json",
             "vae/diffusion_pytorch_model.safetensors"]
    chosen = select_files("flux", files)
    assert {"text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model.safetensors.index.json",
            "tokenizer_2/tokenizer.json", "transformer/diffusion_pytorch_model-00001-of-00003.safetensors"} <= set(chosen)
    assert not {"flux1-schnell.safetensors", "text_encoder_2/model.fp16.safetensors", "tokenizer_2/spiece.model"} & \
        set(chosen)
    with pytest.raises(ModelFetchError, match=r"text_encoder_3/ weights"):  # SD3's T5 is its third encoder
        select_files("sd3", files)


def test_hub_ids_and_cache_names(mirror, tmp_path):
    assert is_hub_id("stable-diffusion-v1-5/stable-diffusion-v1-5") and not is_hub_id(str(mirror / HUB_ID))
    assert not is_hub_id("no-slash") and cache_folder_name("org/name") == "org--name"


def test_fetch_from_mirror_then_load_with_local_files_only(mirror, tmp_path):
    dest = tmp_path / "cache" / cache_folder_name(HUB_ID)
    marker = fetch_model("sd15", "sd", HUB_ID, dest, mirror=mirror)
    assert repo_files(dest) == sorted([*marker["files"], MARKER])
    assert json.loads((dest / MARKER).read_text())["source"] == HUB_ID
    model = load_model("sd", str(dest), local_files_only=True)
    reference = load_model("sd", str(mirror / HUB_ID))
    assert model.resolution == reference.resolution and model.layers() == reference.layers()


def test_unreachable_hub_id_names_model_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "cache" / "no-org--no-model"
    with pytest.raises(ModelFetchError, match=r"model 'sd15': could not fetch 'no-org/no-model' .* cache folder "
                                              + str(dest)):
        fetch_model("sd15", "sd", "no-org/no-model", dest)
    assert not (dest / MARKER).exists()


def test_dit_fetch_keeps_model_index_for_class_names(tmp_path):
    mirror = tmp_path / "hub"
    repo = build_tiny_dit(mirror / "org" / "tiny-dit", ["cat", "dog"])
    index = json.loads((repo / "model_index.json").read_text())  # the hub's DiT folders carry id2label here
    (repo / "model_index.json").write_text(json.dumps({**index, "id2label": {"0": "cat", "1": "dog"}}))
    dest = tmp_path / "cache" / "org--tiny-dit"
    fetch_model("dit", "dit", "org/tiny-dit", dest, mirror=mirror)
    model = load_model("dit", str(dest), local_files_only=True)
    assert model.label_id("dog") == 1


def sd_overlay(results: Path, cache: Path, source: str, mirror: Path | None) -> dict:
    return {"results": str(results), "model_cache": str(cache), "hub_mirror": str(mirror) if mirror else None,
            "datasets": {"shapes": {"source": "shapes", "params": {"n_images": 12}}},
            "models": {"sd15": {"kind": "sd", "source": source, "dtype": "float32", "layers": ["bottleneck", "up_ft1"],
                                "timesteps": [25, 500]}},
            "extraction": {"datasets": ["shapes"], "models": ["sd15"], "batch_size": 4}, "pca": {"views": []},
            "steer": {"targets": []}}


def test_workflow_unreachable_hub_id_fails_in_the_download_job(tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    proc = run_snakemake([str(results / "activations/sd15/shapes/index.json")],
                         sd_overlay(results, cache, "no-org/no-model", None), tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Error in rule download_model" in out
    log = (results / "logs/download_model/no-org--no-model.log").read_text()
    assert "model 'sd15'" in log and str(cache / "no-org--no-model") in log
    assert "rule encode_latents" not in out and "rule extract_activations_sd15" not in out
