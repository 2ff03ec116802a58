"""Stage: extraction. Latents once per image, then activations of every configured layer x timestep, into HDF5.

``layout`` (paths, shard plans; pure Python), ``h5io`` (atomic files, attributes), ``noise`` (seeded noise and
batching), ``latents`` and ``activations`` (the two writing steps), ``dataset`` (both steps for a whole data set
without Snakemake), ``prompts`` (prompt templates and chosen prompts; pure Python), ``clip_prompts`` (a prompt per
image chosen by CLIP) and ``store`` (the reader every later stage goes through).
"""
