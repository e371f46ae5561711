"""What ONE training process runs: the Trainer and its parts (model and optimizer, schedule,
checkpoint, meter, evaluation, perf, host memory, signals) and the Cluster interface with its
torch.distributed adapter. May import: config, data, runs, storage, logs, model. Never Ray or
Hydra (the import contract in pyproject.toml says so), so the same code runs under Ray Train,
under torchrun, in the GPU check and in the tests."""
