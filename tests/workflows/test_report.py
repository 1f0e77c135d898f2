"""recon3d report on the run folder of every stage: its own curves, tables and pictures (the stage table's)."""

from html import escape

import pytest

from recon3d.stages import STAGES


@pytest.mark.parametrize("stage", ["vrn", "stereo", "svr", "gan", "autoencoder"])
def test_report_of_a_single_run_shows_that_stages_curves_and_pictures(stage, request):
    from recon3d.workflows.report import write_report

    fixture = {"autoencoder": "trained_autoencoder", "svr": "trained_svr", "gan": "trained_gan",
               "vrn": "trained_vrn", "stereo": "trained_stereo"}[stage]
    run_dir = request.getfixturevalue(fixture).parent.parent
    page = write_report(run_dir).read_text()
    row = STAGES[stage]
    assert escape(row.title) in page
    assert "train/loss" in page or "train/critic_loss" in page  # the stage's own curves, not another stage's
    if row.pictures and list((run_dir / row.pictures).glob("epoch_*.png")):
        assert f"{row.pictures}/epoch_" in page  # its picture folder, not the GAN's samples/
    other_titles = [r.title for name, r in STAGES.items() if name != stage]
    assert not any(escape(title) in page for title in other_titles)


def test_vendored_viewer_is_the_published_file():
    import hashlib

    from recon3d.workflows.viewer import LIBRARY, VENDOR

    readme = (VENDOR / "README.md").read_text()
    assert hashlib.sha256(LIBRARY.read_bytes()).hexdigest() in readme.replace("\n", "")
    assert (VENDOR / "LICENSE-model-viewer").is_file() and (VENDOR / "LICENSE-three").is_file()
    assert "</script" not in LIBRARY.read_text()  # inlined in a <script> element as it is


def test_report_meshes_turn_in_a_viewer_that_draws_each_one(tmp_path, launch):
    """Meshes of the demo's evaluation folders become <model-viewer>s inside report.html (one file, no network);
    headless Chromium opens it with #viewer-check and every viewer draws its mesh (non-white pixels)."""
    import re
    import shutil

    from recon3d.geometry.procedural import make_shape
    from recon3d.workflows.report import write_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    run = tmp_path / "run"
    (run / "autoencoder").mkdir(parents=True)
    (run / "autoencoder" / "config.json").write_text('{"train": {"accelerator": "cpu", "devices": 1, '
                                                     '"strategy": "auto", "precision": "32-true"}}')
    (run / "gan").mkdir()
    (run / "gan" / "config.json").write_text((run / "autoencoder" / "config.json").read_text())
    for folder, names in (("meshes", ["chair__chair_000", "airplane__airplane_001"]), ("gan", ["gan_0"])):
        (run / "evaluation" / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            make_shape(name.split("__")[0] if "__" in name else "table", i).export(
                run / "evaluation" / folder / f"{name}.obj")
    (run / "evaluation" / "gan" / "gan_1.obj").write_text("# an empty reconstruction\n")
    page = write_report(run).read_text()
    assert page.count('data-name="') == 3 and "gan_1 (empty)" in page
    if not chromium:
        pytest.skip("no chromium here (Debian: apt-get install chromium); .ci/run installs it")
    done = launch.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                           "--enable-unsafe-swiftshader", "--virtual-time-budget=400000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           (run / "report.html").as_uri() + "#viewer-check"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-viewers-drawn="(\d+)/(\d+)"', done.stdout)
    assert found, "the viewers' self-check did not finish"
    pixels = dict(item.rsplit(":", 1) for item in re.search(r'data-viewer-pixels="([^"]*)"', done.stdout)
                  .group(1).split())
    assert found.groups() == ("3", "3") and set(pixels) == {"chair/chair_000", "airplane/airplane_001", "gan_0"}
    assert all(int(count) > 1000 for count in pixels.values()), pixels  # a 220 px view mostly of the shape


def test_config_values_reach_the_report_escaped(trained_vrn, tmp_path):
    """A run folder whose config.json holds markup (written by hand, or by an older recon3d that wrote it before
    refusing the value): the report shows it as text."""
    import json
    import shutil

    from recon3d.workflows.report import write_report

    run_dir = tmp_path / "run"
    shutil.copytree(trained_vrn.parent.parent, run_dir)
    config = json.loads((run_dir / "config.json").read_text())

    def poison(node):  # every string of the config, and a key of every section, becomes markup
        for key, value in list(node.items()):
            if isinstance(value, dict):
                poison(value)
                value["<b>key</b>"] = "<i>x</i>"
            elif isinstance(value, str) and key != "stage":
                node[key] = f"<img src=x onerror=alert('{key}')>"

    poison(config)
    (run_dir / "config.json").write_text(json.dumps(config))
    page = write_report(run_dir).read_text()
    assert "<img src=x" not in page and "<b>key</b>" not in page and "<i>x</i>" not in page
    assert escape("<img src=x onerror=alert('strategy')>") in page
