"""A hospital's attempt at round 1 of run "run-k" that sends nothing, for the reservation tests.

    python -m tests.client.attempt_worker LEDGER die|hold

Once its round is reserved it touches LEDGER.training; then `die` kills itself
(SIGKILL) while training, and `hold` trains until LEDGER.go exists (a live
attempt) and then fails without sending.
"""

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import client.app as client_app
from tests.client.test_client_app import initial
from tests.client.test_privacy_ledger import ATTEMPT, SHAPE, hospital, train_message


def main() -> int:
    ledger, mode = Path(sys.argv[1]), sys.argv[2]
    real = client_app.get_task

    def training(*args, **kwargs):  # type: ignore[no-untyped-def]
        Path(f"{ledger}.training").touch()
        if mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        while not Path(f"{ledger}.go").exists():
            time.sleep(0.02)
        raise RuntimeError("stopped before sending")

    client_app.get_task = lambda name: dataclasses.replace(real(name), train=training)
    reply = client_app.app(train_message(initial(ATTEMPT, SHAPE, 2), ATTEMPT, 1, "run-k"), hospital(ledger))
    return 0 if reply.has_error() else 1


if __name__ == "__main__":
    sys.exit(main())
