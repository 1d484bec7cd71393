"""bad-files=skip: an unreadable item is left out and counted; stop (default) names it."""

import shutil
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from client.app import app
from common.config import RunConfig
from common.errors import DataError
from common.tasks import get_task, load_data
from tests.client.test_client_app import initial
from tests.common.test_image_data import make_folder


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path):
    root = make_folder(tmp_path / "xray")
    (root / "PNEUMONIA" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "NORMAL" / "empty.dcm").write_bytes(b"")
    good = len(list(root.rglob("*.png"))) - 1
    data = load_data(RunConfig(task="image-cnn", data_path=str(root), bad_files="skip"))
    assert len(data.train) == good
    assert len(data.skipped) == 2 and any("broken.png" in s for s in data.skipped)
    with pytest.raises(DataError, match="not a readable"):
        load_data(RunConfig(task="image-cnn", data_path=str(root)))


def test_a_truncated_wfdb_record_is_skipped_and_the_others_read(data_dir: Path, tmp_path: Path):
    for ext in ("hea", "atr", "dat"):
        (tmp_path / f"100.{ext}").symlink_to(data_dir / "mitbih_arrhythmia" / f"100.{ext}")
    for ext in ("hea", "atr"):
        shutil.copy(data_dir / "mitbih_arrhythmia" / f"101.{ext}", tmp_path)
    (tmp_path / "101.dat").write_bytes((data_dir / "mitbih_arrhythmia" / "101.dat").read_bytes()[:1000])
    data = get_task("sequence-rnn").load  # stop: the record is named
    with pytest.raises(DataError, match="101"):
        data(str(tmp_path), RunConfig(task="sequence-rnn"))
    skipped = load_data(RunConfig(task="sequence-rnn", data_path=str(tmp_path), bad_files="skip"))
    assert set(skipped.train.groups) == {"100"} and len(skipped.skipped) == 1


def test_csv_rows_with_words_or_blanks_are_skipped_but_a_missing_label_column_stops(tmp_path: Path):
    table = tmp_path / "ward.csv"
    rows = ["age,bp,label"] + [f"{40 + i},{120 + i},{i % 2}" for i in range(20)] + ["51,high,1", "60,,0", "70,1e999,1"]
    table.write_text("\n".join(rows) + "\n")
    data = load_data(RunConfig(data_path=str(table), bad_files="skip"))
    assert len(data.train) == 20 and len(data.skipped) == 3
    with pytest.raises(DataError, match=r"ward.csv, line 22: a cell is empty or not a number"):
        load_data(RunConfig(data_path=str(table)))
    (tmp_path / "nolabel.csv").write_text("age,bp\n1,2\n")
    with pytest.raises(DataError, match="no 'label' column"):
        load_data(RunConfig(data_path=str(tmp_path / "nolabel.csv"), bad_files="skip"))


def test_the_hospital_reports_how_many_files_it_skipped(tmp_path: Path):
    table = tmp_path / "ward.csv"
    table.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(40)) + "x,1,0\n")
    config = RunConfig(data_path="", num_server_rounds=1, dp=False)
    record = ConfigRecord({**config.to_mapping(), "server-round": 1})
    metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=600, message_type="train")
    msg = Message(content=RecordDict({"arrays": initial(config, (2,), 2), "config": record}), metadata=metadata)
    context = Context(run_id=1, node_id=7, node_config={"data-path": str(table), "bad-files": "skip", "allow-no-dp": True},
                      state=RecordDict(), run_config={})
    reply = app(msg, context)
    assert reply.content["metrics"]["skipped-files"] == 1 and reply.content["metrics"]["num-examples"] == 30
