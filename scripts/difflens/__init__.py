"""difflens: look inside diffusion models (Revelio's layer / timestep probes and the information decomposition of
Kong et al.). One package per pipeline stage; ``provenance`` holds the version."""
from .provenance import __version__  # noqa: F401
