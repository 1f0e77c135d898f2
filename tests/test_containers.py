"""The container recipes, checked as far as this machine can (it has no image builder: no Docker engine, no
Apptainer): both start from the same named CUDA PyTorch image, install recon3d the way the README tells GPU sites
(DeepSpeed without build isolation, then the project; never torch), fail when pip replaces the image's torch, and end
on a smoke test; the templates' launcher hook is how a job runs inside the image."""

import re

from tests.conftest import REPO

DOCKERFILE = (REPO / "containers" / "Dockerfile").read_text()
DEFINITION = (REPO / "containers" / "recon3d.def").read_text()


def test_both_recipes_start_from_the_same_named_image():
    base = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE, re.M).group(1)
    assert re.search(r"^FROM \$\{BASE\}$", DOCKERFILE, re.M)
    assert re.search(r"^From: (\S+)$", DEFINITION, re.M).group(1) == base
    name, _, tag = base.rpartition(":")
    assert name and tag and tag != "latest" and "cuda" in tag  # a version a site can reproduce


def test_both_install_beside_the_images_torch_and_check_it():
    for recipe in (DOCKERFILE, DEFINITION):
        installs = [i.strip() for i in re.findall(r"pip install ([^\n\\&]+)", recipe)]
        assert installs == ['--no-build-isolation "deepspeed>=0.16,<0.20"', '".[ray,video]"'], installs
        assert not re.search(r"pip install[^\n]*\btorch\b", recipe)  # the image's torch is the one used
        assert "pip replaced the image torch" in recipe and "recon3d --version" in recipe


def test_the_templates_run_their_steps_through_the_launcher_the_recipes_name():
    assert 'RECON3D_LAUNCHER="apptainer exec --nv' in DEFINITION
    for name in ("train", "shards", "sweep"):
        template = (REPO / "slurm" / f"{name}.sbatch").read_text()
        steps = [line for line in template.splitlines() if line.lstrip().startswith("srun ")]
        wrapped = [line for line in steps if "recon3d" in line or "ray" in line or line.rstrip().endswith("\\")]
        assert wrapped and all('${launcher[@]+"${launcher[@]}"}' in line for line in wrapped), (name, wrapped)
