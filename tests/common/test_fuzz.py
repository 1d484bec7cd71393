"""Fuzzing the parsers a user's input reaches: nothing but the project's own errors.

Each reader gets arbitrary bytes or text where a file is expected, the config
parsers arbitrary mappings; every example must either succeed or raise a
FedwardError (which names the input), within the deadline (no hang).
"""

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.node_privacy import KEYS as NODE_KEYS
from client.node_privacy import node_privacy
from common.config import RunConfig
from common.errors import FedwardError
from common.ledger import PrivacyLedger
from common.tasks import get_task

FUZZ = settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
KEYS = [k.replace("_", "-") for k in RunConfig.__dataclass_fields__] + ["server-round", "colour", ""]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["iid", "dirichlet:0.5", "dirichlet:-1", "natural", "tabular", "krum",
                                           "image-gan", "skip", "true", "1e9"]),
    st.lists(st.integers(), max_size=3),
)


def _only_our_errors(call) -> None:  # type: ignore[no-untyped-def]
    try:
        call()
    except FedwardError:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_run_config_parser(values):
    def parse() -> None:
        config = RunConfig.from_mapping(values)
        config.validate()  # what it returns is valid

    _only_our_errors(parse)


@FUZZ
@given(st.dictionaries(st.sampled_from([*NODE_KEYS, "data-path"]), VALUES, max_size=4))
def test_node_privacy_parser(values):
    _only_our_errors(lambda: node_privacy(values))


def _in_file(name: str, content: bytes, call) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        _only_our_errors(lambda: call(path))


@FUZZ
@given(st.text(alphabet=st.sampled_from("abel,0123456789.-e\n\r\"? x"), max_size=300))
def test_csv_reader(text):
    _in_file("t.csv", ("label,a,b\n" + text).encode(), lambda p: get_task("tabular").load(str(p), RunConfig(data_path=str(p))))


@FUZZ
@given(st.text(alphabet=st.sampled_from("0123456789.,?-\n "), max_size=300))
def test_heart_disease_reader(text):
    _in_file("processed.x.data", text.encode(), lambda p: get_task("tabular").load(str(p), RunConfig(data_path=str(p))))


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["a.png", "a.jpg", "a.dcm"]), st.sampled_from(["stop", "skip"]))
def test_image_folder_reader(content, name, policy):
    def load(path: Path) -> None:
        root = path.parent.parent
        (root / "B").mkdir(exist_ok=True)
        (root / "B" / name).write_bytes(content[::-1])
        get_task("image-cnn").load(str(root), RunConfig(task="image-cnn", data_path=str(root), bad_files=policy))

    _in_file(f"A/{name}", content, load)


@FUZZ
@given(st.binary(max_size=400))
def test_npz_readers(content):
    _in_file("d.npz", content, lambda p: get_task("image-cnn").load(str(p), RunConfig(task="image-cnn")))
    _in_file("d.npz", content, lambda p: get_task("sequence-rnn").load(str(p), RunConfig(task="sequence-rnn")))


@FUZZ
@given(st.text(max_size=200), st.binary(max_size=200))
def test_wfdb_reader(header, signal):
    def load(path: Path) -> None:
        (path.parent / "100.dat").write_bytes(signal)
        (path.parent / "100.atr").write_bytes(signal[::-1])
        get_task("sequence-rnn").load(str(path.parent), RunConfig(task="sequence-rnn"))

    _in_file("100.hea", header.encode(), load)


@FUZZ
@given(st.binary(max_size=600))
def test_ledger_file(content):
    _in_file("ledger.sqlite", content, lambda p: PrivacyLedger(p).close())
