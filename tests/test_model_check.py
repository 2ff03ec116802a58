"""The sample grid of the model check: torchvision's make_grid lays it out exactly as the hand-written grid did."""
import numpy as np
import pytest
from PIL import Image

from difflens.check.model_check import save_grid


def reference_save_grid(images: np.ndarray, path, cols: int = 8, scale: int = 4) -> None:
    """The grid before make_grid: each tile in a (h + 2) x (w + 2) cell at offset 1, cells row by row."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * (h + 2), cols * (w + 2), 3), dtype=np.uint8)
    for k, im in enumerate(images):
        y, x = divmod(k, cols)
        grid[y * (h + 2) + 1:y * (h + 2) + 1 + h, x * (w + 2) + 1:x * (w + 2) + 1 + w] = im
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


@pytest.mark.parametrize("n,cols,scale", [(32, 8, 4), (13, 8, 4), (3, 8, 4), (1, 8, 4), (1, 1, 2), (5, 2, 1)])
def test_grid_png_is_pixel_identical_to_the_hand_written_one(tmp_path, n, cols, scale):
    images = np.random.default_rng(n * 10 + cols).integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
    save_grid(images, tmp_path / "new.png", cols=cols, scale=scale)
    reference_save_grid(images, tmp_path / "old.png", cols=cols, scale=scale)
    new, old = np.asarray(Image.open(tmp_path / "new.png")), np.asarray(Image.open(tmp_path / "old.png"))
    assert new.shape == old.shape == (-(-n // cols) * 8 * scale, cols * 7 * scale, 3)
    assert (new == old).all()
