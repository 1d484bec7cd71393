"""What a hospital tells the server when a message fails: a category and counts, nothing more.

An exception raised while reading data or training can quote a row, a cell value,
a file path or a patient's file name. None of that may leave the hospital: the
full detail (message and traceback) goes to the hospital's own log, under a
reference; the server gets one line such as

    hospital va: bad-data: 1 row of processed.va.data could not be read (bad-files=stop);
    details in the hospital's log, ref 3f9a12c0

The hospital's log is the SuperNode's standard error, and also the file named by
node config `incident-log` when set.
"""

from __future__ import annotations

import secrets
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

from common.errors import ConfigError, DataError, FedwardError, ModelMismatch

INCIDENT_LOG = "incident-log"
FAILURE_CODE = 0  # Flower's ErrorCode.UNKNOWN: the reason string says the rest


class PublicRefusal(FedwardError):
    """A refusal whose text says only what the hospital decided: it may be sent as is."""


class RunConfigError(ConfigError):
    """The run config the server sent is not valid here: its text names the server's own settings."""


def public_summary(err: BaseException) -> str:
    """What may be said about `err` outside the hospital: a category and counts."""
    if isinstance(err, PublicRefusal):
        return f"refused: {err}"
    if isinstance(err, DataError):
        return f"bad-data: {err.public or 'the hospital data could not be used'}"
    if isinstance(err, RunConfigError):
        return f"run-config: {err}"  # only the server's own settings and values
    if isinstance(err, ModelMismatch):
        return f"model-mismatch: {err}"  # only layer names and shapes of the server's own model
    if isinstance(err, ConfigError):
        return "hospital-config: this hospital's node settings are incomplete or refuse the run as configured"
    return f"internal: {type(err).__name__}"


def log_incident(err: BaseException, hospital: str, node_config: Mapping[str, object]) -> str:
    """Write the whole story to the hospital's log; return the reference to it."""
    ref = secrets.token_hex(4)
    detail = "".join(traceback.format_exception(err))
    entry = f"fedward incident {ref} at {time.strftime('%Y-%m-%d %H:%M:%S')}, hospital {hospital}:\n{detail}"
    print(entry, file=sys.stderr, flush=True)
    path = node_config.get(INCIDENT_LOG)
    if path:
        with Path(str(path)).open("a", encoding="utf-8") as log:
            log.write(entry + "\n")
    return ref


def failure_text(err: BaseException, hospital: str, node_config: Mapping[str, object]) -> str:
    """Log `err` at the hospital; the line the server may read: name, category, log reference."""
    ref = log_incident(err, hospital, node_config)
    return f"hospital {hospital}: {public_summary(err)}; details in the hospital's log, ref {ref}"
