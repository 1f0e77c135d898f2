"""The cluster side: SLURM templates (templates/) and the Python that submits them and chains the stages."""
