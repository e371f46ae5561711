"""The driver side of a run: preparing a job (config checked against the shards and the run
folder), the Ray Train job and its worker adapter, the torchrun entry, resources, stopping on
Ctrl-C, and remote submission (Ray Jobs, KubeRay) sharing one job spec. May import worker and
everything below it; never sweeps (a sweep's trial calls in here, not the other way)."""
