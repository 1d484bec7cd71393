"""fedward's command line: `fedward simulate` (and later certs, ledger)."""
