"""Stage: Diff-C classifiers, linear probes and PCA views on extracted features.

``diffc`` (the Diff-C network, the feature-source protocol its training reads, seeded resumable training that
selects the epoch on val and reads test once), ``probe`` (multinomial logistic probes on pooled vectors, L2 picked
on val; rank-based AUROC), ``pca`` (top-3 principal components of spatial maps as RGB, and their figure).

Reads features only through ``difflens.extract.store``; imports no HDF5 writer, no rule script and no Snakemake.
"""
