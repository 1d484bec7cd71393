import numpy as np
import pytest

from common.config import Partition
from common.data import Samples
from common.errors import ConfigError, DataError
from common.partition import partition_index, partition_indices


def samples(n: int = 200, classes: int = 2, groups=None) -> Samples:
    rng = np.random.default_rng(0)
    return Samples(rng.normal(size=(n, 3)).astype(np.float32), (np.arange(n) % classes).astype(np.int64), groups)


def all_parts(s: Samples, spec: str, count: int) -> list[np.ndarray]:
    return [partition_index(s, Partition.parse(spec), count, i, seed=7) for i in range(count)]


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "dirichlet:100"])
def test_partitions_are_disjoint_and_cover_the_data(spec):
    parts = all_parts(samples(), spec, 4)
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == 200
    assert all(len(p) >= 2 for p in parts)


def test_partitions_are_the_same_in_every_process():
    assert all(np.array_equal(a, b) for a, b in zip(all_parts(samples(), "dirichlet:0.3", 3), all_parts(samples(), "dirichlet:0.3", 3), strict=True))


def test_low_alpha_dirichlet_skews_labels_more_than_iid():
    def skew(parts, y):
        return np.mean([abs(y[p].mean() - 0.5) for p in parts])
    s = samples(1000)
    assert skew(all_parts(s, "dirichlet:0.1", 5), s.y) > skew(all_parts(s, "iid", 5), s.y) + 0.1


def test_natural_partition_follows_the_site_column():
    groups = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20, dtype=object)
    s = samples(100, groups=groups)
    parts = all_parts(s, "natural", 3)
    assert sorted({tuple(np.unique(groups[p])) for p in parts}) == [("a",), ("b",), ("c",)]


def test_more_hospitals_than_samples_is_refused():
    with pytest.raises(ConfigError, match="5 hospitals but only 4 samples"):
        partition_index(samples(4), Partition("iid"), 5, 0, seed=1)


def test_natural_partition_needs_sites():
    with pytest.raises(DataError, match="partition=natural needs a data set with natural sites"):
        partition_index(samples(), Partition("natural"), 2, 0, seed=1)


def test_natural_partition_with_more_hospitals_than_sites_is_refused():
    s = samples(100, groups=np.array(["a", "b"] * 50, dtype=object))
    with pytest.raises(ConfigError, match="has 2 sites, fewer than 3 hospitals"):
        partition_index(s, Partition("natural"), 3, 0, seed=1)


def test_a_hospitals_held_out_split_follows_its_own_labels_every_time():
    """The split is cached per process (it runs for every message): hospitals with as many
    samples but other labels each get sklearn's stratified split of their own labels, and a
    repeat or another seed gives what sklearn gives for it."""
    from sklearn.model_selection import train_test_split

    from common.data import local_split

    rows = np.arange(40, dtype=np.float32).reshape(40, 1)  # x = the row number: the split is readable
    hospitals = [(np.arange(40) % 2), (np.arange(40) < 10), (np.arange(40) >= 30), (np.arange(40) < 10)]
    for labels in hospitals:
        for seed in (3, 4):
            y = labels.astype(np.int64)
            _, expected = train_test_split(np.arange(40), test_size=0.25, random_state=seed, stratify=y)
            _, test = local_split(Samples(rows, y), 0.25, seed=seed)
            assert sorted(test.x[:, 0].astype(int).tolist()) == sorted(expected.tolist())


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5"])
def test_a_patients_samples_stay_at_one_hospital(spec):
    """Where the data names patients, iid and Dirichlet split patients, not samples: split sample by
    sample, one patient sat at several virtual hospitals and each hospital's patient-level epsilon
    covered only its share of that patient (per patient, the epsilons added up)."""
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(40)], rng.integers(1, 12, 40)).astype(object)
    y = (rng.random(len(patients)) < 0.3).astype(np.int64)
    samples = Samples(rng.normal(size=(len(y), 3)).astype(np.float32), y, patients=patients)
    parts = partition_indices(samples, Partition.parse(spec), 4, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y))), "every sample, once"
    owners = [set(patients[p]) for p in parts]
    assert all(len(p) > 0 for p in parts)
    assert sum(len(o) for o in owners) == 40, "no patient at two hospitals"
    with pytest.raises(ConfigError, match="only 40 patients"):
        partition_indices(samples, Partition.parse(spec), 41, 0)
