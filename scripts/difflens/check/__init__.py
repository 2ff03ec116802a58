"""Stage: checks of a loaded text model on held-out data (denoising loss, caption choice, sample grid)."""
