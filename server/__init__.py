"""The ServerApp: strategy, rounds, checkpoints, reports."""
