"""A process that charges a ledger in a loop, for the durability and concurrency tests.

    python -m tests.common.ledger_worker LEDGER SENT_LOG BUDGET [MAX]

Each iteration reserves one round (noise 1.0, q 0.1, 10 steps) and then "sends"
it: appends the charge id to SENT_LOG and fsyncs, as the client sends its reply
only after the ledger committed. It stops when the ledger refuses (budget) or
after MAX rounds. It starts charging once LEDGER.go exists.
"""

import os
import sys
import time

from common.ledger import BudgetExceeded, DatasetLine, PrivacyLedger

STEP = (1.5, 0.02, 10)


def main() -> int:
    ledger_path, sent_log, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else 10**9
    line = DatasetLine("f" * 64, "ward-7", budget, 1e-5)
    open(sent_log + ".ready", "w").close()
    while not os.path.exists(ledger_path + ".go"):  # start together with the other workers
        time.sleep(0.01)
    with PrivacyLedger(ledger_path) as ledger:
        for i in range(limit):
            try:
                charge = ledger.reserve(line, f"run-{os.getpid()}", i + 1, *STEP)
            except BudgetExceeded:
                return 0
            with open(sent_log, "a") as handle:
                handle.write(f"{charge.id}\n")
                handle.flush()
                os.fsync(handle.fileno())
            time.sleep(0.002)  # the next round's training: lets the other run take the lock
    return 0


if __name__ == "__main__":
    sys.exit(main())
