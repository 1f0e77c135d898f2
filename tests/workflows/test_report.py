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
