"""A toy sixth stage made of a table row, a task module and an inference module only (tests/test_stages.py adds it
to the stage table): the proof that adding a model needs nothing else."""
