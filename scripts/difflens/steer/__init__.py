"""Steering k-SAE latents inside the denoiser (splice, generate, choose, effects, run, figures)."""
