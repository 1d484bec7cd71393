import shutil
from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.errors import DataError
from common.tasks import get_task

CONFIG = RunConfig(task="sequence-rnn")


def test_mitbih_beats_get_aami_labels_and_patient_sites(mitbih_subset: Path):
    data = get_task("sequence-rnn").load(str(mitbih_subset), CONFIG)
    assert data.input_shape == (90, 11) and data.num_classes == 5
    assert set(data.train.groups) == {"100", "105", "119", "208"}
    labels = set(np.unique(data.train.y))
    assert {0, 2} <= labels  # record 119 and 208 hold many ventricular (V) beats
    per_beat = data.train.x[:, :, 0]
    assert np.allclose(per_beat.mean(axis=1), 0, atol=1e-4)
    from common.tasks.sequence_rnn.dataset import FEATURE_SCALE, WAVE_CHANNELS as W

    assert np.allclose(data.train.x[:, :, 2].mean(axis=1), 0, atol=1e-4)  # the second lead's beat, z-normalised
    assert np.array_equal(data.train.x[:, -1, W:], data.train.x[:, 0, W:]), "the same at every step"
    rhythm = np.exp(data.train.x[:, 0, W:] / FEATURE_SCALE)  # the channels hold FEATURE_SCALE ln(ratio)
    # premature ventricular beats come early and are followed by a compensatory pause
    normal, ventricular = rhythm[data.train.y == 0], rhythm[data.train.y == 2]
    assert np.median(ventricular[:, 0]) < 0.85 < np.median(normal[:, 0])
    assert np.median(ventricular[:, 1]) > 1.15 > np.median(normal[:, 1])


def _two_lead_record(folder: Path, names: list[str], fs: int = 360, gap: str | None = None) -> Path:
    """A 10 s WFDB record, a beat every second; the lead named MLII (or II) is a spike train, the
    others a smooth wave, so either is recognisable in the beats. `gap`: that lead is NaN for 3 s."""
    import wfdb

    t = np.arange(10 * fs)
    spikes = np.where(t % fs == fs // 2, 1.0, 0.0) + 0.01 * np.sin(t / 7)
    smooth = np.sin(2 * np.pi * t / fs)
    signal = np.stack([spikes if n.upper() in ("MLII", "II") else smooth for n in names], axis=1)
    if gap is not None:
        signal[2 * fs : 5 * fs, names.index(gap)] = np.nan
    wfdb.wrsamp("rec", fs=fs, units=["mV"] * len(names), sig_name=names, p_signal=signal, fmt=["16"] * len(names),
                write_dir=str(folder))
    peaks = np.arange(fs // 2, 10 * fs, fs)
    wfdb.wrann("rec", "atr", peaks, symbol=["N"] * len(peaks), write_dir=str(folder))
    return folder / "rec"


def _is_spike(beats: np.ndarray) -> bool:
    middle = beats.shape[1] // 2
    return bool(np.all(beats[:, middle] == beats.max(axis=1)) and np.all(beats.max(axis=1) > 3))


@pytest.mark.parametrize("names", [["MLII", "V5"], ["V5", "MLII"], ["V1", "ii"], ["V5", "V2", "MLII"]])
def test_the_mlii_lead_comes_first_wherever_the_record_keeps_it(tmp_path: Path, names: list[str]):
    """MIT-BIH record 114 stores V5 as its lead 0 and MLII as lead 1; every beat's channel 0 is
    the MLII lead (the spike; "II" in any case too), channel 2 another lead, whatever their order."""
    from common.tasks.sequence_rnn.dataset import read_record

    x, y = read_record(_two_lead_record(tmp_path, names))
    assert x.shape[2] == 11 and set(y) == {0}
    assert _is_spike(x[:, :, 0]), "channel 0: the MLII spike at the R peak"
    assert not _is_spike(x[:, :, 2]), "channel 2: the smooth lead"


def test_a_one_lead_record_repeats_its_lead(tmp_path: Path):
    from common.tasks.sequence_rnn.dataset import read_record

    x, _ = read_record(_two_lead_record(tmp_path, ["V1"]))
    assert np.array_equal(x[:, :, 0], x[:, :, 2]) and np.array_equal(x[:, :, 1], x[:, :, 3])


def test_a_gap_in_the_second_lead_keeps_the_patient_with_a_warning(tmp_path: Path):
    from common.tasks.sequence_rnn.dataset import read_record

    with pytest.warns(UserWarning, match=r"rec: lead V5 holds NaN values where beats are; its channels repeat lead ML"):
        x, _ = read_record(_two_lead_record(tmp_path, ["MLII", "V5"], gap="V5"))
    assert len(x) == 10 and np.isfinite(x).all() and np.array_equal(x[:, :, 0], x[:, :, 2])


def test_a_gap_in_the_primary_lead_is_refused_naming_the_lead(tmp_path: Path):
    from common.tasks.sequence_rnn.dataset import read_record

    with pytest.raises(DataError, match=r"rec: lead MLII holds NaN values where beats are .* leave the record out"):
        read_record(_two_lead_record(tmp_path, ["MLII", "V5"], gap="MLII"))


def test_a_record_at_another_rate_is_resampled_to_half_second_windows(tmp_path: Path):
    """A 180 Hz record gives the same 0.5 s windows (90 steps) with the R peak in the middle."""
    from common.tasks.sequence_rnn.dataset import read_record

    x, y = read_record(_two_lead_record(tmp_path, ["MLII", "V1"], fs=180))
    assert x.shape[1:] == (90, 11) and len(y) == 10
    middle = x.shape[1] // 2
    assert np.all(np.abs(np.argmax(x[:, :, 0], axis=1) - middle) <= 1), "the peak within a step of the middle"
    smooth = x[:, :, 2]  # a 1 s sine seen for 0.5 s from its crest: it falls from top to bottom (1 s: back up)
    assert np.all(smooth[:, 0] > 1) and np.all(smooth[:, -1] < -1)


def test_rr_features_are_relative_to_the_patients_own_rhythm():
    from common.tasks.sequence_rnn.dataset import rr_features

    peaks = np.array([0, 100, 200, 250, 400, 500])  # beat 3 is early, beat 4 follows a pause
    rr = rr_features(peaks, local=2)
    mean = 100.0
    assert np.allclose(rr[:, 0] * mean, [100, 100, 100, 50, 150, 100])  # interval before (first: after)
    assert np.allclose(rr[:, 1] * mean, [100, 100, 50, 150, 100, 100])  # interval after (last: before)
    assert np.allclose(rr[:, 2] * mean, [100, 100, 100, 100, 75, 100])  # mean of the 2 intervals before that
    assert np.allclose(rr[:, 3], [1, 1, 1, 0.5, 2, 1])  # before / local rhythm
    assert np.allclose(rr[:, 4], [1, 1, 0.5, 3, 2 / 3, 1])  # after / before
    assert np.allclose(rr_features(peaks * 3, local=2), rr), "unitless: the same at another sampling rate"


def test_a_premature_beat_during_a_fast_rhythm_is_early_against_the_local_rhythm():
    """A supraventricular beat 20% early in a stretch of tachycardia is not early against the
    record's mean interval (the slow stretch raises it): only the local rhythm shows it."""
    from common.tasks.sequence_rnn.dataset import rr_features

    intervals = [400] * 40 + [200] * 30 + [160, 240] + [200] * 30  # the early beat follows interval 160
    peaks = np.concatenate([[0], np.cumsum(intervals)])
    early = 71
    rr = rr_features(peaks)
    steady = np.r_[11:41, 52:71, 83:103]  # normal beats whose 10 intervals before are all of one stretch
    assert rr[early, 0] > 0.5  # against the record's mean (278): 0.57, near the fast normal beats' 0.72
    assert rr[early, 3] < 0.85  # against the local rhythm: 160 / 200
    assert np.allclose(rr[steady, 3], 1)


def test_real_supraventricular_beats_are_early_and_ventricular_beats_unlike_the_patients_usual_beat(
        mitbih_subset: Path):
    """On real records (100 and 208 hold 35 S beats; 119 and 208 many V beats): the features the
    model gets separate S and V from N across these four patients."""
    from common.tasks.sequence_rnn.dataset import FEATURE_SCALE, WAVE_CHANNELS

    data = get_task("sequence-rnn").load(str(mitbih_subset), CONFIG)
    logs, y = data.train.x[:, 0, WAVE_CHANNELS:], data.train.y
    assert abs(float(np.median(logs[y == 0, 3]))) < 0.2  # FEATURE_SCALE ln(ratio): 0 at the usual beat
    features = np.exp(logs / FEATURE_SCALE)  # the ratios themselves
    normal, supra, ventricular = features[y == 0], features[y == 1], features[y == 2]
    assert len(supra) >= 30
    assert np.median(supra[:, 3]) < 0.85 < 0.95 < np.median(normal[:, 3])  # early against the local rhythm
    assert np.median(ventricular[:, 6]) > 2 * np.median(normal[:, 6])  # far from the patient's median beat
    assert np.median(ventricular[:, 4]) > 1.3 > np.median(normal[:, 4])  # compensatory pause


def test_truncated_wfdb_record_is_named(data_dir: Path, tmp_path: Path):
    for ext in ("hea", "atr"):
        shutil.copy(data_dir / "mitbih_arrhythmia" / f"101.{ext}", tmp_path)
    dat = (data_dir / "mitbih_arrhythmia" / "101.dat").read_bytes()
    (tmp_path / "101.dat").write_bytes(dat[:1000])
    with pytest.raises(DataError, match=r"101: cannot read this WFDB record|101: the signal holds NaN|101: no annotated"):
        get_task("sequence-rnn").load(str(tmp_path), CONFIG)


def test_folder_without_headers_is_refused(tmp_path: Path):
    with pytest.raises(DataError, match=r"no WFDB header \(.hea\) files"):
        get_task("sequence-rnn").load(str(tmp_path), CONFIG)


def test_npz_rows_of_beats(tmp_path: Path):
    path = tmp_path / "beats.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(10, 50)), y=np.arange(10) % 3)
    data = get_task("sequence-rnn").load(str(path), CONFIG)
    assert data.input_shape == (50, 1) and data.num_classes == 3


def test_a_channels_first_npz_is_refused_with_the_transpose_to_apply(tmp_path: Path):
    """(N, 1, T), PyTorch's layout, was read as one time step of T features."""
    path = tmp_path / "beats.npz"
    np.savez(path, x=np.zeros((10, 1, 180)), y=np.arange(10) % 2)
    with pytest.raises(DataError, match=r"one time step of 180 features.*np.transpose\(x, \(0, 2, 1\)\)") as err:
        get_task("sequence-rnn").load(str(path), CONFIG)
    assert str(path) in str(err.value)


def test_npz_with_a_central_test_split(tmp_path: Path):
    """x_test/y_test (e.g. the inter-patient DS2 records) become the server's test set, not hospitals' data."""
    rng = np.random.default_rng(0)
    path = tmp_path / "beats.npz"
    np.savez(path, x=rng.normal(size=(10, 50)), y=np.arange(10) % 2, groups=np.array(["101", "106"] * 5),
             x_test=rng.normal(size=(4, 50)), y_test=np.array([0, 1, 2, 2]))
    data = get_task("sequence-rnn").load(str(path), CONFIG)
    assert len(data.train) == 10 and data.test is not None and len(data.test) == 4
    assert data.num_classes == 3 and data.test.x.shape == (4, 50, 1)
    assert set(data.train.groups) == {"101", "106"}


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x_test": np.zeros((2, 50))}, "needs both 'x_test' and 'y_test'"),
    ({"x_test": np.zeros((2, 40)), "y_test": np.zeros(2)}, r"'x_test' rows have shape \(40, 1\)"),
    ({"x_test": np.zeros((2, 50)), "y_test": np.array([0, -1])}, r"y_test\): labels must lie in"),
])
def test_a_broken_test_split_is_refused_naming_the_file(tmp_path: Path, arrays: dict, message: str):
    path = tmp_path / "beats.npz"
    np.savez(path, x=np.zeros((4, 50)), y=np.array([0, 1, 0, 1]), **arrays)
    with pytest.raises(DataError, match=message) as err:
        get_task("sequence-rnn").load(str(path), CONFIG)
    assert str(path) in str(err.value)
