"""The benefit report: a hospital's local-only and personalised models, kept at the hospital.

The real round loop and ClientApp in this process (tests.inprocess_grid), on the four
real heart-disease hospitals, 2 rounds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message

from client.app import app
from client.benefit import MODEL_FILES, REPORT, load_model
from client.personalise import load_mixture
from client.hospital import hospital_data, node_settings
from common.calibration import cross_fitted
from common.config import RunConfig
from common.metrics import classification_metrics
from common.tasks import get_task, resolve
from common.training import predict_proba
from server.federation import run_federation
from tests.inprocess_grid import InProcessGrid, WireTap

SITES = ("cleveland", "hungarian", "switzerland", "va")
HEADLINE = ("balanced_accuracy", "auroc", "accuracy")


def simulated(data_dir: Path, out: Path, dp: bool = True) -> tuple[RunConfig, list[dict]]:
    """As `fedward simulate --benefit --partition natural` sets up the virtual hospitals."""
    config = resolve(RunConfig(data_path=str(data_dir / "heart_disease_uci"), partition="natural", num_server_rounds=2,
                               dp=dp, epsilon=1.0, min_hospitals=4, test_fraction=1 / 3, seed=0, out_dir=str(out)))
    (out / "ledgers").mkdir(parents=True)
    node = {"benefit-report": True, "share-benefit": True, "benefit-dir": str(out / "benefit"),
            "reproducible-noise": True, "privacy-ledger": str(out / "ledgers" / "ledger.sqlite")}
    return config, [{"partition-id": i, "num-partitions": 4, **node} for i in range(4)]


def recompute(model_file: Path, config: RunConfig, node: dict) -> dict[str, float]:
    """The model saved at `model_file`, scored from scratch on the hospital's own held-out split."""
    hospital = hospital_data(config, node_settings(node))
    task = get_task(config.task)
    build = lambda: task.build_model(hospital.input_shape, hospital.num_classes, config)  # noqa: E731
    model = load_mixture(build(), build(), model_file) if model_file.name == MODEL_FILES["personalised"] else \
        load_model(build(), model_file)
    raw = predict_proba(model, hospital.test.x, torch.device("cpu"))
    proba = cross_fitted(raw, hospital.test.y, hospital.num_classes)
    scores = classification_metrics(hospital.test.y, proba, ranking=raw)  # AUROC ranks the uncorrected scores
    return {k: scores[k.replace("_", "-")] for k in HEADLINE}


def test_the_table_equals_a_recomputation_from_the_saved_models(data_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    config, nodes = simulated(data_dir, out)
    run_federation(InProcessGrid(app, nodes), config)

    with (out / "benefit.csv").open() as handle:
        table = {row["hospital"]: row for row in csv.DictReader(handle)}
    assert set(table) == set(SITES)
    card = json.loads((out / "model_card.json").read_text())["benefit"]
    final = torch.load(out / "final_model.pt", map_location="cpu")
    for node in nodes:
        name = hospital_data(config, node_settings(node)).name
        row = table[name]
        assert row["status"] == "ok"
        folder = next((out / "benefit" / name).iterdir())
        with np.load(folder / MODEL_FILES["global"]) as saved:  # the model the hospital was sent last
            assert all(np.array_equal(saved[k], final[k].numpy()) for k in final)
        for model in ("local_only", "global", "personalised"):
            again = recompute(folder / MODEL_FILES[model], config, node)
            for metric in HEADLINE:
                assert float(row[f"{model}_{metric}"]) == pytest.approx(again[metric], abs=1e-5), (name, model, metric)
        for metric in HEADLINE:  # each difference to local-only, inside its own bootstrap interval
            mid = float(row[f"personalised_minus_local_{metric}"])
            assert mid == pytest.approx(float(row[f"personalised_{metric}"]) - float(row[f"local_only_{metric}"]),
                                        abs=1e-5)
            if row[f"personalised_minus_local_{metric}_low"]:
                assert float(row[f"personalised_minus_local_{metric}_low"]) <= mid + 1e-9
                assert mid - 1e-9 <= float(row[f"personalised_minus_local_{metric}_high"])
        # simulation only: the pooled model with and without DP, and the cross-site matrix's diagonal
        assert {f"pooled_{k}" for k in HEADLINE} | {f"pooled_dp_{k}" for k in HEADLINE} <= {k for k, v in row.items() if v}
    with (out / "cross_site.csv").open() as handle:
        matrix = list(csv.DictReader(handle))
    assert len(matrix) == 16
    for cell in matrix:
        if cell["model_of"] == cell["scored_on"]:
            assert float(cell["accuracy"]) == pytest.approx(float(table[cell["model_of"]]["local_only_accuracy"]))
    assert {h["hospital"] for h in card["hospitals"]} == set(SITES)
    assert (out / "benefit.png").stat().st_size > 0


def _wire(replies: list[Message]) -> list[tuple]:
    """Everything in the replies but the rounded timings: record names, keys, values and arrays."""
    out = []
    for msg in replies:
        if msg.has_error():
            out.append(("error", msg.error.reason))
            continue
        records = []
        for name, record in sorted(msg.content.items()):
            if name in msg.content.array_records:
                records.append((name, [(k, a.numpy()) for k, a in record.items()]))
            else:
                records.append((name, sorted((k, v) for k, v in record.items() if k != "seconds")))
        out.append((msg.metadata.message_type, records))
    # Flower samples the nodes of a round in random order: per hospital and kind, in round order
    return sorted(out, key=lambda reply: repr(reply[0]) + repr([r for r in reply[1] if r[0] == "hospital"])
                  + repr([r[0] for r in reply[1]]))


def _same(a: object, b: object) -> bool:
    """Equal structure, keys and text; numbers and arrays equal up to float32 rounding (two runs of
    the same federation on a busy CPU differ in the last bits of their sums)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-6))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-6, nan_ok=True)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_with_share_benefit_off_the_server_receives_exactly_what_it_would_without_the_report(
        data_dir: Path, tmp_path: Path):
    """Hospitals in their own folders (not the run directory), sharing nothing: every reply
    holds what that of a run whose hospitals compute no report holds (same records, keys and
    values); the report and the
    personalised model exist at the hospital only, load, and score what its table says."""
    def run(name: str, report: bool) -> tuple[WireTap, list[dict], RunConfig, Path]:
        out = tmp_path / name / "run"
        config, nodes = simulated(data_dir, out, dp=False)
        nodes = [{**n, "share-benefit": False, "benefit-report": report, "allow-no-dp": True,
                  "benefit-dir": str(tmp_path / name / f"hospital-{i}")} for i, n in enumerate(nodes)]
        grid = WireTap(app, nodes)
        run_federation(grid, config)
        return grid, nodes, config, out

    quiet, _, _, _ = run("no-report", report=False)
    tapped, nodes, config, out = run("report-kept", report=True)
    assert _same(_wire(tapped.received), _wire(quiet.received))
    assert not any("benefit" in m.content for m in tapped.received if not m.has_error())
    assert not (out / "benefit.csv").exists() and json.loads((out / "model_card.json").read_text())["benefit"] is None
    assert not [p for p in out.rglob("*") if "personalised" in p.name or "local_only" in p.name]

    for i, node in enumerate(nodes):
        reports = list((tmp_path / "report-kept" / f"hospital-{i}").rglob(REPORT))
        assert len(reports) == 1
        row = json.loads(reports[0].read_text())["row"]
        personalised = reports[0].parent / MODEL_FILES["personalised"]
        again = recompute(personalised, config, node)
        for metric in HEADLINE:
            assert row[f"personalised_{metric}"] == pytest.approx(again[metric], abs=1e-5)


def test_a_hospital_with_too_few_held_out_records_gets_a_line_not_a_crash(data_dir: Path, tmp_path: Path):
    """Real hospitals (their own data-path and held-out split); switzerland holds out 10%:
    5 records, too few for the report, and its table says so; the run completes."""
    out = tmp_path / "run"
    config = resolve(RunConfig(data_path="", partition="natural", num_server_rounds=2, dp=False, min_hospitals=4,
                               out_dir=str(out)))
    nodes = [{"data-path": str(data_dir / "heart_disease_uci" / f"processed.{site}.data"), "hospital": site,
              "test-fraction": 0.1 if site == "switzerland" else 1 / 3, "min-eval-size": 0, "allow-no-dp": True,
              "benefit-report": True, "share-benefit": True, "benefit-dir": str(tmp_path / site)} for site in SITES]
    run_federation(InProcessGrid(app, nodes), config)
    with (out / "benefit.csv").open() as handle:
        table = {row["hospital"]: row for row in csv.DictReader(handle)}
    assert table["switzerland"]["status"].startswith("too few held-out records (5;")
    assert not table["switzerland"]["local_only_accuracy"]
    assert {table[s]["status"] for s in ("cleveland", "hungarian", "va")} == {"ok"}
    own = json.loads(next((tmp_path / "switzerland").rglob(REPORT)).read_text())["row"]
    assert own["status"] == table["switzerland"]["status"]
    assert not list((tmp_path / "switzerland").rglob("*.npz"))


def test_a_server_asking_again_under_another_run_id_gets_the_same_report_not_a_new_training(
        data_dir: Path, tmp_path: Path):
    """A curious server re-sends the 'final' evaluation with another model and another fedward
    run id: within one Flower run the hospital answers with the report it already made."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

    from tests.client.test_client_app import message

    config = RunConfig(data_path=str(data_dir / "heart_disease_uci"), partition="natural", num_server_rounds=2,
                       dp=False)
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={}, node_config={
        "partition-id": 0, "num-partitions": 4, "benefit-report": True, "share-benefit": True,
        "benefit-dir": str(tmp_path)})
    shape = hospital_data(config, {"partition-id": 0, "num-partitions": 4}).input_shape
    replies = []
    for run_id, seed in (("first", 0), ("second", 1)):
        torch.manual_seed(seed)
        arrays = ArrayRecord(get_task("tabular").build_model(shape, 2, config).state_dict())
        msg = message("evaluate", arrays, config, server_round=2)
        msg.content["config"] = ConfigRecord({**msg.content["config"], "fedward-run-id": run_id})
        reply = app(msg, context)
        assert not reply.has_error(), reply.error
        replies.append(dict(reply.content["benefit"]))
    assert replies[0] == replies[1]
    assert [p.parent.name for p in tmp_path.rglob(REPORT)] == ["first"]
