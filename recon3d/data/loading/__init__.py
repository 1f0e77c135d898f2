"""Loading shards: the manifest and shard files (local, remote, cached), indexes, per-rank and per-worker streams,
decoding pipelines, the DataModule, exported latents."""
