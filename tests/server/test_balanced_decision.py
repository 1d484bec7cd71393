"""A whole DP run (the real round loop over the real ClientApp, in process) on skewed real data:
the server holds only noisy class histograms, and its balanced decision rule on their sum finds
more of the rare class than argmax."""

from __future__ import annotations

from pathlib import Path

import json
import numpy as np
from sklearn.datasets import load_breast_cancer

import torch

from client.app import app
from common.class_prior import adjust, per_class, prior_of
from common.config import RunConfig
from common.tasks import get_task, load_data
from common.tasks.tabular.scaling import published_ranges, range_scale
from common.training import predict_proba
from server.federation import run_federation
from tests.inprocess_grid import WireTap


def skewed_breast_cancer(folder: Path) -> tuple[Path, Path]:
    """Wisconsin breast cancer with malignant cases (sklearn's class 0 -> label 1) thinned to about
    1 in 12, as a training CSV and a held-out CSV of the same mix that the run never sees."""
    data = load_breast_cancer()
    low, high = published_ranges(data.DESCR, data.data.shape[1])
    features = range_scale(data.data, low, high)  # as fedward's built-in copy is scaled; no data statistic
    rng = np.random.default_rng(0)
    benign = rng.permutation(np.flatnonzero(data.target == 1))
    malignant = rng.permutation(np.flatnonzero(data.target == 0))[:48]
    header = ",".join(f"f{i}" for i in range(data.data.shape[1])) + ",label"
    paths = []
    for name, rows in (("train", np.concatenate([benign[:260], malignant[:24]])),
                       ("held-out", np.concatenate([benign[260:], malignant[24:]]))):
        lines = [",".join(f"{v:.6g}" for v in features[i]) + f",{int(data.target[i] == 0)}" for i in sorted(rows)]
        paths.append(folder / f"{name}.csv")
        paths[-1].write_text("\n".join([header, *lines]) + "\n")
    return paths[0], paths[1]


def test_a_dp_run_decides_by_the_noisy_prior_and_finds_more_of_the_rare_class(tmp_path: Path):
    data, held_out_csv = skewed_breast_cancer(tmp_path)
    config = RunConfig(task="tabular", data_path=str(data), num_server_rounds=3, batch_size=16, epsilon=3.0,
                       min_hospitals=2, out_dir=str(tmp_path / "run"), seed=0)
    # reproducible-noise (simulation only): the same noisy histograms every time the test runs
    grid = WireTap(app, [{"partition-id": i, "num-partitions": 2, "reproducible-noise": True} for i in range(2)])
    out = run_federation(grid, config)
    section = json.loads((out / "model_card.json").read_text())["final_metrics"]["class_prior"]
    assert len(section["hospitals"]) == 2 and section["rule"].startswith("post-hoc logit adjustment")
    assert section["tau"] == 1.0, "tabular's tau: the Bayes rule for the balanced error"
    prior = np.array(section["prior"])
    # the card holds what a reader needs to rebuild the prior: the summed noisy histogram, floored by its noise
    assert np.allclose(prior, prior_of(np.array(section["summed"]), len(section["hospitals"])))
    held_out = load_data(RunConfig(task="tabular", data_path=str(held_out_csv))).train
    model = get_task("tabular").build_model(held_out.x.shape[1:], 2, config)
    model.load_state_dict(torch.load(out / "final_model.pt", map_location="cpu"))
    proba = predict_proba(model, held_out.x, torch.device("cpu"))
    by_argmax, balanced = per_class(held_out.y, proba), per_class(held_out.y, adjust(proba, prior))
    assert balanced["recall"][1] >= by_argmax["recall"][1] + 0.2, (by_argmax, balanced, section["prior"])  # malignant found
    # All the server ever held: noisy histograms, never a hospital's exact one.
    labels = np.loadtxt(data, delimiter=",", skiprows=1)[:, -1].astype(int)
    sent = [np.array(r.content["class-prior"]["counts"]) for r in grid.received
            if not r.has_error() and "class-prior" in r.content.config_records]
    assert len(sent) == 2 * config.num_server_rounds
    for counts in sent:
        assert not np.allclose(counts, np.round(counts)), "an exact count"
        assert counts.sum() < len(labels), "one hospital's noisy share, not the whole table's"
