"""Bad input to `fedward simulate` stops with one message before any worker starts."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedward.cli import main


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["simulate", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "segmentation"], "--task 'segmentation' is not known"),
        (["--strategy", "fedsgd"], "--strategy 'fedsgd' is not known"),
        (["--epsilon", "0"], "--epsilon 0.0 must be > 0"),
        (["--rounds", "-1"], "--rounds -1 must be > 0"),  # errors spell the flag the user typed, not the run-config key
        (["--partition", "dirichlet:0"], "Dirichlet alpha must be a positive"),
        (["--hospitals", "600"], "600 hospitals but only 569 samples"),
        (["--task", "image-cnn"], "--data is required for task image-cnn"),
        (["--model", "transformer"], "--model 'transformer' is not a tabular model"),
        (["--partition", "natural"], "--partition natural needs a data set with natural sites"),
        (["--node-config", "balanced-decision=no"], "is not key=value pairs Flower can read"),
        (["--server-momentum", "0.5", "--strategy", "fedprox"],
         "--server-momentum 0.5 applies to strategy fedavg only (FedAvgM); --strategy fedprox: set --server-momentum -1"),
        (["--central-dp-noise", "1", "--secure-aggregation"], "cannot go with --secure-aggregation: the server clips"),
        (["--test-fraction", "2"], "--test-fraction 2.0 must be in (0, 1)"),
        (["--class-weighting", "true", "--no-class-weighting"], "--no-class-weighting contradicts --class-weighting true"),
        (["--balanced-tau", "inf"], "--balanced-tau inf must be a finite number > 0 (or 0 for the task's default)"),
        # a value argparse alone would read as an unknown flag ("expected one argument")
        (["--balanced-tau", "-inf"], "--balanced-tau -inf must be a finite number > 0 (or 0 for the task's default)"),
        (["--epsilon", "-1e-3"], "--epsilon -0.001 must be > 0"),
        (["--balanced-tau", "2", "--no-dp"], "--balanced-tau 2.0 is the balanced rule's tau, which applies only under DP"),
        (["--balanced-tau", "2", "--no-balanced-decision"], "this run has --no-balanced-decision: leave it out"),
        (["--balanced-tau", "2", "--secure-aggregation"],  # SecAgg+: no class histogram is released
         "this run has --secure-aggregation, where no hospital releases its class histogram: leave it out"),
    ],
)
def test_bad_settings(capsys, args, message):
    code, err = run(capsys, *args)
    assert code == 2 and message in err, err


def test_balanced_tau_on_a_task_without_class_decisions_is_refused(capsys, data_dir: Path, tmp_path: Path):
    """The GAN decides no classes: a tau for it would be recorded in the card and change nothing."""
    code, err = run(capsys, "--task", "image-gan", "--data", str(data_dir / "medmnist" / "pneumoniamnist.npz"),
                    "--balanced-tau", "2", "--out", str(tmp_path / "run"))
    assert code == 2 and "--balanced-tau 2.0 is the balanced decision rule's tau; task image-gan makes no class" in err
    assert not (tmp_path / "run").exists()


def test_missing_data_path_is_named(capsys, tmp_path: Path):
    code, err = run(capsys, "--task", "image-cnn", "--data", str(tmp_path / "xrays"))
    assert code == 2 and f"{tmp_path / 'xrays'} does not exist" in err


def test_corrupt_image_is_named_and_nothing_is_written(capsys, tmp_path: Path):
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "xray" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "xray" / label / "ok.png")
    (tmp_path / "xray" / "NORMAL" / "bad.jpeg").write_bytes(b"\xff\xd8\xff truncated")
    code, err = run(capsys, "--task", "image-cnn", "--data", str(tmp_path / "xray"), "--out", str(tmp_path / "run"))
    assert code == 2 and "bad.jpeg: not a readable image" in err
    assert not (tmp_path / "run").exists()


def test_csv_with_wrong_columns_is_named(capsys, tmp_path: Path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    code, err = run(capsys, "--data", str(tmp_path / "t.csv"))
    assert code == 2 and "t.csv: no 'label' column" in err


def test_truncated_wfdb_record_is_named(capsys, data_dir: Path, tmp_path: Path):
    (tmp_path / "ecg").mkdir()
    for ext in ("hea", "atr"):
        (tmp_path / "ecg" / f"100.{ext}").symlink_to(data_dir / "mitbih_arrhythmia" / f"100.{ext}")
    (tmp_path / "ecg" / "100.dat").write_bytes(b"\x00" * 100)
    code, err = run(capsys, "--task", "sequence-rnn", "--data", str(tmp_path / "ecg"))
    assert code == 2 and "ecg/100:" in err, err


def test_supernode_node_config_typo_is_a_message_and_the_help_names_real_keys(capsys, tmp_path: Path):
    """`bad-files=skip` (text unquoted) crashed Flower's SuperNode with a parse traceback, and
    the help suggested `skip-bad-files`, a key nothing reads."""
    from deploy.certs import hospital_keys, init_ca_and_server
    from fedward.cli import build_parser

    init_ca_and_server(tmp_path / "certs", "localhost", [])
    private, _ = hospital_keys(tmp_path / "keys", "va")
    args = ["supernode", "--superlink", "127.0.0.1:9092", "--ca", str(tmp_path / "certs" / "ca.crt"),
            "--key", str(private), "--hospital", "va", "--data", str(tmp_path), "--dry-run"]
    assert main([*args, "--node-config", "bad-files=skip"]) == 2
    err = capsys.readouterr().err
    assert "--node-config 'bad-files=skip'" in err and "bad-files=\"skip\"" in err and "Traceback" not in err
    assert main([*args, "--node-config", 'bad-files="skip"']) == 0
    assert "bad-files=\"skip\"" in capsys.readouterr().out
    supernode = build_parser()._subparsers._group_actions[0].choices["supernode"]  # noqa: SLF001
    text = supernode.format_help()
    assert "skip-bad-files" not in text and "bad-files=" in text
    assert main([*args, "--approve-fab", "not-a-hash"]) == 2
    assert "64 hex digits" in capsys.readouterr().err


def test_a_deployment_run_into_a_used_folder_says_how_to_continue_it_there(tmp_path: Path):
    """What the ServerApp says when out-dir holds a run: resume=true with `fedward run`, not the
    simulation command."""
    from common.config import RunConfig
    from common.errors import FedwardError
    from server import run_state

    run_state.start(RunConfig(out_dir=str(tmp_path)))
    with pytest.raises(FedwardError) as refused:
        run_state.start(RunConfig(out_dir=str(tmp_path)))
    assert "resume=true" in str(refused.value) and "`fedward run`" in str(refused.value)
    assert f"fedward simulate --resume {tmp_path}" not in str(refused.value)


def test_simulate_delta_is_what_the_virtual_hospitals_account_with(tmp_path: Path):
    """--delta reaches the virtual hospitals' ledgers (it was silently replaced by their default 1e-5)."""
    from client.node_privacy import node_privacy
    from common.config import RunConfig
    from fedward.cli import simulated_node_config

    values = simulated_node_config(RunConfig(delta=1e-7, out_dir=str(tmp_path / "run")), "")
    assert node_privacy(values).delta_for(500, 1e-7) == 1e-7
    own = simulated_node_config(RunConfig(delta=1e-7, out_dir=str(tmp_path / "own")), "delta=1e-6")
    assert node_privacy(own).delta_for(500, 1e-7) == 1e-6, "a --node-config delta is the hospital's own choice"


def test_flags_given_with_resume_are_refused_not_silently_dropped(capsys, tmp_path: Path):
    """A walkthrough resumed with --server-momentum 0.5 --rounds 5 --out B: the run continued at its own
    settings, in its own folder, and said nothing."""
    code, err = run(capsys, "--resume", str(tmp_path / "r1"), "--server-momentum", "0.5", "--rounds", "5",
                    "--out", str(tmp_path / "r2"))
    assert code == 2
    assert "--rounds, --server-momentum, --out would be ignored" in err and "run.json" in err, err
    assert not (tmp_path / "r2").exists()


def test_fedward_run_offers_resume_only_where_the_run_left_checkpoints(tmp_path: Path):
    """A run refused for its config (e.g. min-local-steps=-5) created nothing: resuming would fail the same way."""
    from fedward.operator_run import resume_hint

    assert resume_hint(None) == "" and resume_hint(tmp_path / "never-created") == ""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")  # what a run that began writes (server/run_state.py)
    assert "run the same command with resume=true" in resume_hint(tmp_path / "run")
