"""Tools over a shard set: verify it, draw a contact sheet."""
