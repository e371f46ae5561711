"""A run's record: its folder in storage (one writer per process), reading it back, W&B
tracking and comparing runs. May import config, storage and logs; not worker or launch."""
