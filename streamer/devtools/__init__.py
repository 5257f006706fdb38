"""Development tooling, not the product: the demo, its local broker, synthetic recordings."""
