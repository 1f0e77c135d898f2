"""`recon3d bench`: benchmarks that print figures (prep, shards, loader, training step, strategies, extraction,
LFD) and the timing helpers they share."""
