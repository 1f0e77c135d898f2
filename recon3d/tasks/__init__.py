"""LightningModules: steps, losses, optimisers and logging for each training stage."""
