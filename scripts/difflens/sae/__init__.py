"""Stage: k-sparse autoencoders on extracted activations and their label-purity analysis.

Reads features only through ``difflens.extract.store``; imports no HDF5 writer, no rule script and no Snakemake.
``memory`` is pure Python (the Snakefile imports it for the jobs' memory requests).
"""
