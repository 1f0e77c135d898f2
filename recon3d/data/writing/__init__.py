"""Writing shards: mesh sources and formats, one shape -> one sample, where the work runs, the shard writer."""
