"""A hospital's attempts at round 1 of run "run-k" that send nothing, for the reservation tests.

    python -m tests.client.attempt_worker LEDGER MODE[,MODE...]

One attempt per mode, in this process: `fail` raises an error in training;
`die` kills the process (SIGKILL) while training; `hold` touches LEDGER.training
once its round is reserved, trains until LEDGER.go exists (a live attempt), then
fails without sending.
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
    ledger, modes = Path(sys.argv[1]), sys.argv[2].split(",")
    real = client_app.get_task
    for mode in modes:
        def training(*args, mode=mode, **kwargs):  # type: ignore[no-untyped-def]
            if mode == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hold":
                Path(f"{ledger}.training").touch()
                while not Path(f"{ledger}.go").exists():
                    time.sleep(0.02)
            raise RuntimeError("stopped before sending")

        client_app.get_task = lambda name, training=training: dataclasses.replace(real(name), train=training)
        reply = client_app.app(train_message(initial(ATTEMPT, SHAPE, 2), ATTEMPT, 1, "run-k"), hospital(ledger))
        if not reply.has_error():
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
