"""The Ray Train adapter: rank, world and devices from Ray's context; checkpoints through
`ray.train.report`, uploaded in the background by our retrying upload function; the restored
checkpoint from `ray.train.get_checkpoint()`. `train_loop` is what TorchTrainer runs."""

from __future__ import annotations

import contextlib
import logging
import threading

import ray.train
import ray.train.torch
import torch

from orchestrator import storage
from orchestrator.config import TrainConfig
from orchestrator.runs.folder import RunFolder
from orchestrator.worker import checkpoint
from orchestrator.worker.cluster import Cluster, newest_intact
from orchestrator.worker.signals import StopWatch
from orchestrator.worker.trainer import Trainer


def quiet_report_lines() -> None:
    """Ray Train V2 logs every report ("Reporting training result N: TrainingReport(...)") at
    INFO through a logger named after its source file, which LoggingConfig does not reach;
    those lines would fill the user's console, one per report per worker."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


class RayCluster(Cluster):
    def __init__(self, folder: RunFolder) -> None:
        quiet_report_lines()
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.devices = ray.train.torch.get_devices() if torch.cuda.is_available() else [torch.device("cpu")]
        self.folder = folder
        # Only rank 0 watches for the driver's stop request; the Trainer shares what it sees.
        self.stop_watch = StopWatch(folder.stop_requested) if self.rank == 0 else None
        self.uploading = 0  # checkpoints handed to Ray whose upload has not ended yet
        self.uploaded = threading.Condition()

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def stop_requested(self) -> bool:
        return self.stop_watch is not None and self.stop_watch.requested

    def close(self) -> None:
        if self.stop_watch is not None:
            self.stop_watch.close()

    def report(self, metrics: dict[str, float], folder: str | None, best: bool = False) -> None:
        def upload(ckpt: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
            """Ray registers a checkpoint only after this returns, so a half-written one is
            never chosen for resume; the upload is retried through storage outages."""
            url = self.folder.path(name)
            try:
                try:
                    storage.put_dir(ckpt.path, url, self.folder.options)
                finally:  # uploaded or failed for good, the staged copy must not pile up on the disk
                    checkpoint.discard(ckpt.path)
                if best:
                    storage.copy_dir(url, self.folder.best_url, self.folder.options)
            finally:
                self._count_upload(-1)
            path, fs = storage.ray_storage(url, self.folder.options)
            return ray.train.Checkpoint(path=path, filesystem=fs)

        self._count_upload(+1 if folder else 0)
        try:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None,
                checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                checkpoint_upload_fn=upload,
                delete_local_checkpoint_after_upload=False,  # `upload` removes it, also when it fails
            )
        except BaseException:
            self._count_upload(-1 if folder else 0)
            raise

    def _count_upload(self, change: int) -> None:
        with self.uploaded:
            self.uploading += change
            self.uploaded.notify_all()

    def wait_for_uploads(self, timeout_s: float) -> bool:
        """Ray uploads in a background thread (CheckpointUploadMode.ASYNC) and waits for it
        only when the run ends; what reads the best checkpoint before then waits here."""
        with self.uploaded:
            return self.uploaded.wait_for(lambda: self.uploading == 0, timeout_s)

    def restored_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        """The newest intact checkpoint up to the one Ray registered last (a newer folder may
        be a half-finished upload): Ray's own choice unless it is damaged."""
        restored = ray.train.get_checkpoint()
        if restored is None:
            return contextlib.nullcontext(None)
        registered = restored.path.rstrip("/").rsplit("/", 1)[-1]
        return newest_intact(self.folder, [n for n in self.folder.checkpoints()[::-1] if n <= registered])


def train_loop(config: TrainConfig) -> None:
    """One Ray Train worker."""
    folder = RunFolder.of(config)
    cluster = RayCluster(folder)
    try:
        Trainer(config, cluster).fit()
    finally:
        cluster.close()
