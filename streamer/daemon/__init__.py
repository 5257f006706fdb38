"""The long-running consumer: run loop, partition bookkeeping, checkpoints, metrics, systemd."""
