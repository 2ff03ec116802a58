"""Stage: information decomposition (Kong et al., ICLR 2024), in nats.

``estimators`` (log-SNR proposal, pointwise / pixel-wise / conditional i^s and i^o, MMSE curves), ``toy`` (a Gaussian
world with closed forms to check them against), ``inputs`` (latents, masks and word rows of a data set), ``aro``
(caption choice in resumable shards, accuracy tables), ``localize`` (MI / CMI / attention maps, mIoU), ``intervene``
(ODE inversion, word edits, correlations) and ``plots``.
"""
