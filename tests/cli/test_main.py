"""The command line itself: the console script and python -m, the verb table, and how errors reach the user (one
line and an exit code; --debug shows the traceback)."""

import subprocess
import sys

import pytest
import torch

from recon3d import __version__
from recon3d.cli.main import main


def test_console_script_runs(launch):
    result = launch.recon3d("--help")
    assert result.returncode == 0 and "shards" in result.stdout


def test_import_stays_light():
    code = ("import sys, recon3d, recon3d.config; "
            "print(any(m in sys.modules for m in ('torch', 'lightning', 'omegaconf')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_version_and_python_dash_m(launch):
    from recon3d import __version__

    out = launch.recon3d("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"recon3d {__version__}"


def test_train_help_lists_every_stage_from_the_table(capsys):
    from recon3d.stages import STAGES

    for verb in ("train", "eval"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = capsys.readouterr().out
        assert all(stage in text for stage in STAGES), verb


def test_a_programming_error_is_not_passed_off_as_a_user_error(monkeypatch):
    """Only errors a user can fix become one-line messages; a KeyError from a bug keeps its traceback."""
    from recon3d.cli import data_verbs

    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(data_verbs, "_shards_summary", broken)
    monkeypatch.setattr(data_verbs, "SHARD_VERBS", [v if v.name != "summary" else v.__class__(
        v.name, v.help, v.configure, broken) for v in data_verbs.SHARD_VERBS])
    with pytest.raises(KeyError, match="internal"):
        main(["shards", "summary", "anywhere"])


def _verb_raising(monkeypatch, error):
    from recon3d.cli import data_verbs

    def broken(args):
        raise error

    monkeypatch.setattr(data_verbs, "SHARD_VERBS", [v if v.name != "summary" else v.__class__(
        v.name, v.help, v.configure, broken) for v in data_verbs.SHARD_VERBS])


@pytest.mark.parametrize("text, says", [
    (b"train:\n  lr: 0.1\n  lr: 0.2\n", " (line 3, column 3): found duplicate key lr"),
    (b"train:\n  lr: [0.1\n", " (line 3, column 1): did not find expected ',' or ']'"),
    (b"train:\n  run_dir: \xff\xfe\n", ": not UTF-8 text (byte 18"),
])
def test_a_broken_yaml_is_one_line_naming_the_file(tmp_path, capsys, text, says):
    (tmp_path / "bad.yaml").write_bytes(text)
    assert main(["train", "-c", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"bad.yaml{says}" in err


def test_a_full_disk_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import errno

    _verb_raising(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "/scratch/shards/train-000003.tar"))
    assert main(["shards", "summary", "anywhere"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device: /scratch/shards/train-000003.tar" in err
    with pytest.raises(OSError):
        main(["shards", "summary", "anywhere", "--debug"])
    monkeypatch.setenv("RECON3D_DEBUG", "1")
    with pytest.raises(OSError):
        main(["shards", "summary", "anywhere"])


def test_config_errors_exit_2_before_work(tmp_path, capsys):
    assert main(["shards", "build", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                 "geometry.voxel_resolutoin=32"]) == 2
    assert "did you mean 'voxel_resolution'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["shards", "build", "--root", str(tmp_path / "nope")]) == 2


def test_help_and_version_answer_without_loading_torch():
    """`recon3d --help` and `--version` build no model: the parsers of every verb load neither torch nor Lightning
    (--device auto is resolved when a verb runs)."""
    code = ("import sys; from recon3d.cli.main import build_parser, main; build_parser().format_help(); "
            "main(['--version']); print('torch' in sys.modules, 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"recon3d {__version__}", "False False"]


def test_device_auto_is_resolved_when_a_verb_runs():
    from recon3d.cli.options import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="--device cuda:1: "):
            resolve_device("cuda:1")


def test_a_cuda_device_where_there_is_none_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["eval", "--ckpt", "x.ckpt", "--shards", "s", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "--device cuda: 0 CUDA device(s) visible here" in err[0]
