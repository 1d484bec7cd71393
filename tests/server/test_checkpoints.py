"""Checkpoints are data, not code: a resumed run reads them back without unpickling anything."""

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from common.config import RunConfig
from common.errors import FedwardError
from server.records import save_checkpoint
from server.run_state import resume, start
from server.strategies import build_strategy


def test_fedadam_state_survives_a_checkpoint_read_without_pickle(tmp_path: Path):
    config = RunConfig(strategy="fedadam", out_dir=str(tmp_path))
    state = start(config)
    (tmp_path / "checkpoints").mkdir()
    strategy = build_strategy(config)
    rng = np.random.default_rng(0)
    weights = {"fc.weight": rng.random((2, 3), dtype=np.float32), "fc.bias": rng.random(2, dtype=np.float32)}
    strategy.current_arrays = {k: v.copy() for k, v in weights.items()}
    strategy.m_t = {k: v * 0.5 for k, v in weights.items()}
    strategy.v_t = None  # a moment not yet started stays absent
    path = save_checkpoint(tmp_path, 3, ArrayRecord({k: Array(v) for k, v in weights.items()}), strategy)
    with np.load(path, allow_pickle=False) as saved:  # nothing in it needs pickle
        assert set(saved.files) >= {"meta", "arrays/fc.weight", "state/m_t/fc.bias"}
    restored = resume(tmp_path)
    assert restored.run_id == state.run_id and restored.completed_round == 3
    assert np.array_equal(restored.arrays["fc.weight"].numpy(), weights["fc.weight"])
    assert np.array_equal(restored.strategy_state["m_t"]["fc.bias"], weights["fc.bias"] * 0.5)
    assert restored.strategy_state["v_t"] is None


def test_server_momentum_survives_a_resume_and_the_next_round_moves_as_if_never_stopped(tmp_path: Path):
    """FedAvgM's momentum is a list of arrays (FedOpt's moments are dicts): a resumed run restores it in
    order, and its next aggregate equals the uninterrupted run's."""
    from server.run_state import restore_strategy
    from tests.server.test_screening_and_strategies import reply

    config = RunConfig(task="image-cnn", dp=False, server_momentum=0.7, out_dir=str(tmp_path))
    start(config)
    (tmp_path / "checkpoints").mkdir()
    weights = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}

    def round_of(value: float) -> list:
        return [reply("a", {k: np.full_like(v, value) for k, v in weights.items()}),
                reply("b", {k: np.full_like(v, value + 2) for k, v in weights.items()})]

    going = build_strategy(config)
    going.current_arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
    after_1, _ = going.aggregate_train(1, round_of(1.0))
    save_checkpoint(tmp_path, 1, after_1, going)
    expected, _ = going.aggregate_train(2, round_of(4.0))

    restored = resume(tmp_path)
    fresh = build_strategy(config)
    restore_strategy(fresh, restored.strategy_state)
    assert fresh.current_arrays is None  # FedAvgM's configure_train takes the round's (checkpoint's) weights
    fresh.current_arrays = restored.arrays
    resumed, _ = fresh.aggregate_train(2, round_of(4.0))
    for key in weights:
        assert np.allclose(resumed[key].numpy(), expected[key].numpy())
    assert not np.allclose(expected["w"].numpy(), 4.0)  # momentum moved it past the plain mean


def test_a_damaged_checkpoint_is_named(tmp_path: Path):
    start(RunConfig(out_dir=str(tmp_path)))
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    (tmp_path / "checkpoints" / "round-0002.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(FedwardError, match="round-0002.npz is damaged"):
        resume(tmp_path)


@pytest.mark.parametrize("fused", [True, False])
def test_a_run_killed_inside_round_2_drops_what_round_2_wrote(tmp_path: Path, fused: bool):
    """Fused rounds evaluate round 1's model in round 2's messages: a kill after those rows were written
    and before round 2's checkpoint left them on disk, and the resumed round 2 wrote them again (a
    duplicated row in metrics.jsonl, seen in the kill-and-resume test). Separate evaluate messages
    write round 1's evaluation in round 1: it is kept."""
    import json

    from flwr.app import Array, ArrayRecord

    config = RunConfig(out_dir=str(tmp_path), num_server_rounds=3, fused_rounds=fused)
    start(config)
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    save_checkpoint(tmp_path, 1, ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))}), build_strategy(config))
    rows = [{"round": 1, "hospital": "h", "split": s} for s in ("train", "central", "evaluate")]
    rows.append({"round": 2, "hospital": "h", "split": "train"})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    resume(tmp_path)
    kept = [(r["round"], r["split"]) for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert kept == ([(1, "train"), (1, "central")] + ([] if fused else [(1, "evaluate")]))
