"""Development tooling, not the product: the demo, its local broker, synthetic recordings, and the use-case
examples' fault injection (faults), incident report (incidents) and scoring through the CLI (usecase)."""
