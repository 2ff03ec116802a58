"""Stage: information decomposition (Kong et al.): log-SNR proposal and pointwise information scores."""
