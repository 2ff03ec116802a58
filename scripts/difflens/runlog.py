"""Logging set-up shared by the rule scripts: everything (logging, warnings, tracebacks) goes to the rule's log."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def start_log(path: str | Path, level: int = logging.INFO) -> logging.Logger:
    """Send stderr (tqdm bars, warnings, uncaught tracebacks) and the logging module to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)
    sys.stderr = stream
    logging.basicConfig(level=level, stream=stream, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    return logging.getLogger("difflens")
