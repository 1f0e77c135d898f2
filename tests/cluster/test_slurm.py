"""recon3d/cluster/slurm.py without a cluster: the chain's own steps (exporting latents, evaluating) go through the
launcher hook as the templates' srun steps do, and stages the shards cannot feed are left out, saying why."""

from recon3d.cluster import slurm


def test_the_chains_own_steps_go_through_the_launcher(tiny_shards, tmp_path, monkeypatch):
    submitted = []
    monkeypatch.setattr(slurm, "sbatch", lambda args, script=None, job_args=(), wrap="": submitted.append(
        (list(args), list(job_args), wrap)) or len(submitted))
    jobs = slurm.submit_pipeline(shards=str(tiny_shards), out=str(tmp_path / "chain"),
                                 stages=["autoencoder", "svr"])
    assert list(jobs) == ["autoencoder", "latents", "svr", "eval"]
    latents, evals = submitted[jobs["latents"] - 1][2], submitted[jobs["eval"] - 1][2]
    assert "${RECON3D_LAUNCHER:-} recon3d export-latents --ckpt" in latents
    assert evals.count("${RECON3D_LAUNCHER:-} recon3d eval --ckpt") == 2


def test_the_default_chain_leaves_out_what_the_shards_cannot_feed(tiny_shards, stereo_shards):
    assert "stereo" not in slurm.chain_stages(str(tiny_shards))  # no right-eye views
    assert "stereo" in slurm.chain_stages(str(stereo_shards))
    assert slurm.chain_stages("/nowhere/yet") == list(slurm.STAGES)  # not built yet: the user's list, or all


def test_a_path_with_a_semicolon_stays_one_quoted_argument_of_each_step(tmp_path, monkeypatch):
    submitted = []
    monkeypatch.setattr(slurm, "sbatch", lambda args, script=None, job_args=(), wrap="": submitted.append(
        wrap) or len(submitted))
    jobs = slurm.submit_pipeline(shards="/scratch/a; b", out=str(tmp_path / "chain"), stages=["autoencoder", "gan"])
    evals = submitted[jobs["eval"] - 1]
    assert evals.count("${RECON3D_LAUNCHER:-}") == 2  # one per eval command, none inside the quoted path
    assert evals.count("--shards '\"'\"'/scratch/a; b'\"'\"'") == 2  # quoted once, then once more for bash -c
