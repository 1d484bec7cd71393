"""A misspelt node-config key is refused before anything trains, where the hospital starts it and at every message."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client.app import app
from common.config import RunConfig
from fedward.cli import main
from tests.client.test_client_app import initial, message


def test_a_supernode_with_a_misspelt_key_does_not_start(capsys, tmp_path: Path, monkeypatch):
    """`require-secure-aggregaton=true` was accepted and ignored: the hospital trained outside SecAgg+."""
    from deploy.certs import hospital_keys, init_ca_and_server

    monkeypatch.setenv("FEDWARD_HOME", str(tmp_path / "home"))
    init_ca_and_server(tmp_path / "certs", "localhost", [])
    private, _ = hospital_keys(tmp_path / "keys", "va")
    args = ["supernode", "--superlink", "127.0.0.1:9092", "--ca", str(tmp_path / "certs" / "ca.crt"),
            "--key", str(private), "--hospital", "va", "--data", str(tmp_path), "--dry-run"]
    assert main([*args, "--node-config", "require-secure-aggregaton=true max-evaluations=0"]) == 2
    out, err = capsys.readouterr()
    assert "'require-secure-aggregaton' (did you mean 'require-secure-aggregation'?)" in err, err
    assert "fix the spelling or remove it" in err and "Traceback" not in err and "flower-supernode" not in out
    assert main([*args, "--node-config", "require-secure-aggregation=true max-evaluations=0"]) == 0


def test_simulate_refuses_a_misspelt_node_config_key(capsys, tmp_path: Path):
    code = main(["simulate", "--node-config", "epsilon-budgt=5", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "'epsilon-budgt' (did you mean 'epsilon-budget'?)" in err, err


def test_a_hand_started_supernode_with_a_misspelt_key_trains_nothing(data_dir: Path, tmp_path: Path, capfd):
    """A SuperNode started without fedward's launcher: the ClientApp refuses every message, before reading data
    or charging the ledger; the server reads only the generic hospital-config line."""
    ledger = tmp_path / "ledger.sqlite"
    node = {"data-path": str(data_dir / "heart_disease_uci" / "processed.va.data"), "hospital": "va",
            "privacy-ledger": str(ledger), "require-secure-aggregaton": True}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    config = RunConfig(data_path="", num_server_rounds=1, epsilon=1.0)
    for kind in ("train", "evaluate", "query"):
        reply = app(message(kind, initial(config, (10,), 2), config, 1), context)
        assert reply.has_error()
        assert reply.error.reason.startswith("hospital va: hospital-config:"), reply.error.reason
        assert "secure" not in reply.error.reason
    assert "did you mean 'require-secure-aggregation'" in capfd.readouterr().err, "the hospital's own log says why"
    assert not ledger.exists(), "nothing was charged or even opened"


def test_every_node_config_key_the_readmes_document_is_accepted():
    """The node-config tables and `--node-config '...'` examples of README.md and deploy/README.md name only keys
    the check accepts: a hospital copying the docs is never refused."""
    import re

    from client.node_keys import NODE_KEYS, check_node_keys
    from tests.conftest import PROJECT_ROOT

    documented: set[str] = set()
    for doc in ("README.md", "deploy/README.md"):
        text = (PROJECT_ROOT / doc).read_text()
        for example in re.findall(r"--node-config '([^']*)'", text):
            documented.update(k for k in re.findall(r"([a-z][a-z-]*)=", example) if k != "k")
        documented.update(re.findall(r"^\| `([a-z]+(?:-[a-z]+)*)` \| ", text, flags=re.MULTILINE))
    documented -= {"tabular", "image-cnn", "sequence-rnn", "image-gan"}  # the task table, not node config
    assert {"privacy-ledger", "delta", "epsilon-budget", "benefit-report", "bad-files"} <= documented, documented
    check_node_keys(dict.fromkeys(documented, 1))
    assert documented <= set(NODE_KEYS)


def test_bad_node_config_values_are_refused_before_a_supernode_starts(capsys, tmp_path: Path, monkeypatch):
    """The walkthrough: these passed --dry-run and failed only when a round read them (personalise-epochs after
    every hospital had trained and spent its epsilon), or crashed Flower's parser (data-path given twice)."""
    from deploy.certs import hospital_keys, init_ca_and_server

    monkeypatch.setenv("FEDWARD_HOME", str(tmp_path / "home"))
    init_ca_and_server(tmp_path / "certs", "localhost", [])
    private, _ = hospital_keys(tmp_path / "keys", "va")
    args = ["supernode", "--superlink", "127.0.0.1:9092", "--ca", str(tmp_path / "certs" / "ca.crt"),
            "--key", str(private), "--hospital", "va", "--data", str(tmp_path), "--dry-run"]
    for text, message in (("personalise-epochs=2", "personalise-epochs is no longer used"),
                          ('bad-files="skp"', "bad-files='skp' must be"),
                          ("test-fraction=2", "test-fraction=2 must be in"),
                          ("max-evaluations=-1", "max-evaluations=-1 must be >= 0"),
                          ('benefit-report="yes"', "benefit-report='yes' must be true or false"),
                          ('data-path="/elsewhere"', "data-path is set by --data")):
        assert main([*args, "--node-config", text]) == 2, text
        assert message in capsys.readouterr().err, text


def test_simulate_refuses_a_retired_key_before_any_hospital_trains(capsys, tmp_path: Path):
    code = main(["simulate", "--node-config", "personalise-epochs=2", "--out", str(tmp_path / "run")])
    assert code == 2 and "personalise-epochs is no longer used" in capsys.readouterr().err
    assert not (tmp_path / "run" / "ledgers").exists(), "nothing trained, no ledger opened"
