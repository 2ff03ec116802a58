"""Stage: training the shapes-world model (``shapes``). The architecture itself lives in ``difflens.models``."""
