import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

#: torch threads per test process: the CI machine's 2 cores, or 1 in each of `make test`'s two pytest-xdist workers
#: (two processes spinning 2 OpenMP threads each on 2 cores slow each other down many times over)
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if THREADS == 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "science: a science claim at several seeds against its controls (slow: run by "
                            "`make test-science`, left out of `make test`)")


def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    """Torch on the test process's threads (two CPU threads, one per worker under xdist), restored after it."""
    yield from _torch_threads(THREADS)


@pytest.fixture
def one_thread():
    """Torch on one thread, restored after it: a tiny model's many small denoiser calls run several times slower on
    two contended cores."""
    yield from _torch_threads(1)


#: the shapes-world model shipped with difflens
SHIPPED_SHAPES = Path(__file__).resolve().parents[1] / "resources" / "shapes_model"


def make_shapes_world(tmp_path_factory, name: str, n_images: int):
    """A shapes world of ``n_images`` (the default world's other settings) generated in a fresh temp folder, loaded."""
    from difflens.data.common import Dataset
    from difflens.data.shapes import ShapesConfig, generate

    root = tmp_path_factory.mktemp(name)
    generate(root, ShapesConfig(n_images=n_images), progress=False)
    return Dataset.load(root)


def load_shipped_shapes():
    """The shipped shapes model on the CPU, torch on the test process's threads."""
    import torch

    from difflens.models import load_model

    torch.set_num_threads(THREADS)
    return load_model("shapes", str(SHIPPED_SHAPES), device="cpu")


SCIENCE_LAYERS = ["down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"]
SCIENCE_TIMESTEPS = [25, 500, 900]


@pytest.fixture(scope="session")
def science_store(tmp_path_factory):
    """The science tests' small run: 3,000 shapes-world images (80/10/10) through the shipped shapes model, every
    layer at t = 25, 500 and 900, maps saved; a FeatureStore over it."""
    import torch

    from difflens.data.common import Dataset
    from difflens.data.shapes import ShapesConfig, generate
    from difflens.extract.dataset import extract_dataset
    from difflens.extract.store import FeatureStore
    from difflens.models import load_model

    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("science")
    generate(root / "data", ShapesConfig(n_images=3000), progress=False)
    model = load_model("shapes", str(Path(__file__).resolve().parents[1] / "resources" / "shapes_model"),
                       device="cpu")
    extract_dataset(model, Dataset.load(root / "data"), root / "results", "shapes", layers=SCIENCE_LAYERS,
                    timesteps=SCIENCE_TIMESTEPS, save_maps=True, progress=False)
    return FeatureStore(root / "results")
