"""The GPU proof (gpu_proof.sh with its Python): measured on a lent GPU machine, not installed with recon3d."""
