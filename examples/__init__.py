"""Use-case examples: each folder turns shared real recordings into the daemon's input and reports on them."""
