"""The detector core: ticks in, scores out; pure (no I/O) and free of torch."""
