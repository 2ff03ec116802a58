"""What the tests check of a figure written as PNG and PDF: the PNG is the PDF's page, rendered at the PNG's dpi."""
from __future__ import annotations

import re
from pathlib import Path

from PIL import Image


def pdf_page_points(pdf: str | Path) -> tuple[float, float]:
    """(width, height) in points of the page of a PDF that matplotlib wrote (its ``/MediaBox``)."""
    box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", Path(pdf).read_bytes())
    assert box, f"{pdf}: no /MediaBox: not a PDF that matplotlib wrote"
    return float(box[1]), float(box[2])


#: how far a side of the PNG may be from the PDF page's: a tight bounding box is measured by each format's renderer,
#: and Agg's text extents differ from the PDF's by up to 2 % (a legend: 1286 against 1261 px)
TIGHT_BOX_TOLERANCE = 0.03


def assert_png_is_pdf_page(png: str | Path, pdf: str | Path) -> tuple[int, int]:
    """Assert that the PNG (read by PIL) has as many pixels per side as the PDF's page has points times the PNG's dpi
    / 72, within ``TIGHT_BOX_TOLERANCE`` and one pixel: the same figure, saved with the same bounding box. Returns
    the PNG's size."""
    image = Image.open(png)
    assert image.format == "PNG", f"{png}: {image.format}, not a PNG"
    dpi = image.info["dpi"][0]
    want = [points * dpi / 72 for points in pdf_page_points(pdf)]
    assert all(abs(got - w) <= 1 + TIGHT_BOX_TOLERANCE * w for got, w in zip(image.size, want)), \
        (str(png), image.size, want)
    return image.size
