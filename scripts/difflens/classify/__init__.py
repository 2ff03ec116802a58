"""Stage: Diff-C classifiers, linear probes and PCA views on extracted features.

Reads features only through ``difflens.extract.store``; imports no HDF5 writer, no rule script and no Snakemake.
"""
