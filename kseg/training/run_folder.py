"""A run's folder: what a `kseg train` run keeps on disk and finds there again when it resumes.

    folder = RunFolder("runs/a")          # the chief's (or a single process's): it writes
    folder = RunFolder("runs/a", writes=False)  # another worker's twin: it reads nothing and writes nothing

`best.keras` and `last.keras` (each with a `.json` provenance sidecar written once the checkpoint exists),
`config.json` (every setting, the chosen ones with their reasons), `log.csv`, `summary.json`, `tensorboard/`
and `backup/` (what a killed run resumes from; removed when the run finishes). Every file is written
atomically; a full disk ends the run with one line (`DiskFull`), temporary files removed, and the same
command resumes it once there is room.
"""

import csv
import dataclasses
import errno
import glob
import json
import os

import keras

from kseg import files
from kseg.errors import KsegError


class DiskFull(KsegError):
    """The disk under the run folder filled up while kseg wrote to it."""


def is_disk_full(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


def save_atomic(model: keras.Model, path: str, sidecar: dict | None = None) -> None:
    """`model.save(path)` through a temporary file in the same folder and an atomic rename, then the
    checkpoint's JSON sidecar (`<path>.json`): never a sidecar without its checkpoint."""
    tmp = path[: -len(".keras")] + ".tmp.keras"
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if sidecar is not None:
        files.write_json(path + ".json", sidecar)


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Saves the model as `.keras` (with its sidecar) when `monitor` improves, through `save_atomic`, so a kill
    during the save never leaves a broken checkpoint under the final name."""

    def __init__(self, path: str, monitor: str = "val_miou", best: float | None = None, sidecar: dict | None = None):
        super().__init__()
        self.path, self.monitor, self.sidecar = path, monitor, sidecar
        self.best = -float("inf") if best is None else best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best = float(value)
            save_atomic(self.model, self.path, self.sidecar)


@dataclasses.dataclass
class ResumeState:
    """What a previous session of the run left: rounds finished, best val mIoU, seconds spent, its config."""

    rounds: int = 0
    best: float | None = None
    seconds: float = 0.0
    config: dict = dataclasses.field(default_factory=dict)


class RunFolder:
    """The files of one run in `out_dir`; with `writes=False` (the non-chief workers of a multi-worker run) a
    twin that finds nothing and writes nothing."""

    RESULTS = ("best.keras", "last.keras", "log.csv", "summary.json")

    def __init__(self, out_dir: str, writes: bool = True):
        self.out_dir, self.writes = out_dir, writes
        self.best = os.path.join(out_dir, "best.keras")
        self.last = os.path.join(out_dir, "last.keras")
        self.config = os.path.join(out_dir, "config.json")
        self.backup = os.path.join(out_dir, "backup")
        self.checkpoint_sidecar: dict | None = None  # what made the checkpoints (`kseg.provenance.record`)

    def holds_finished_run(self) -> bool:
        return self.writes and os.path.exists(self.last) and not os.path.isdir(self.backup)

    def start(self, overwrite: bool, finished: bool) -> None:
        """Makes the folder; a `finished` run's results are removed when `overwrite`, else a KsegError."""
        if finished and not overwrite:
            raise KsegError(f"{self.out_dir} holds a finished run; choose another output folder or pass --overwrite")
        if not self.writes:
            return
        if finished:
            for name in self.RESULTS:
                for path in (os.path.join(self.out_dir, name), os.path.join(self.out_dir, name + ".json")):
                    if os.path.exists(path):
                        os.remove(path)
        os.makedirs(self.out_dir, exist_ok=True)

    def resume_state(self) -> ResumeState:
        """What an interrupted session left. Rows of log.csv past the backup's last round belong to a round
        that runs again: they are dropped."""
        if not self.writes:
            return ResumeState()
        metadata = os.path.join(self.backup, "training_metadata.json")
        state = ResumeState()
        if os.path.exists(metadata):
            with open(metadata) as f:
                state.rounds = int(json.load(f)["epoch"])  # BackupAndRestore stores the count of finished rounds
        log = os.path.join(self.out_dir, "log.csv")
        if os.path.exists(log):
            with open(log, newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["epoch"]) < state.rounds]
            if rows:
                state.best = max(float(row["val_miou"]) for row in rows if row.get("val_miou"))
                state.seconds = float(rows[-1].get("seconds") or 0.0)
                with open(log, "w", newline="") as f:  # drop rows of a round the backup does not hold
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                os.remove(log)
        if state.rounds and os.path.exists(self.config):
            with open(self.config) as f:  # a resumed run keeps its rounds, or the backup's count means nothing
                state.config = json.load(f)
        return state

    def write_config(self, record: dict) -> None:
        if self.writes:
            files.write_json(self.config, record)

    def callbacks(self, best: float | None) -> list:
        """The chief's writers, in order: the log row and best checkpoint before the backup."""
        if not self.writes:
            return []
        return [
            keras.callbacks.CSVLogger(os.path.join(self.out_dir, "log.csv"), append=True),
            AtomicBestCheckpoint(self.best, "val_miou", best, self.checkpoint_sidecar),
            keras.callbacks.BackupAndRestore(self.backup, double_checkpoint=True),
            keras.callbacks.TensorBoard(os.path.join(self.out_dir, "tensorboard"), write_graph=False),
        ]

    def finish(self, model: keras.Model, summary: dict) -> None:
        """The last checkpoint, the best one where no round made it (a run resumed after its last round),
        and summary.json."""
        if not self.writes:
            return
        save_atomic(model, self.last, self.checkpoint_sidecar)
        if not os.path.exists(self.best):
            save_atomic(model, self.best, self.checkpoint_sidecar)
        files.write_json(os.path.join(self.out_dir, "summary.json"), summary)

    def disk_full(self, error: BaseException) -> DiskFull:
        """The one-line error for a full disk, once the temporary files the failed write left are removed."""
        for pattern in ("*.tmp.keras", ".tmp-*"):
            for path in glob.glob(os.path.join(self.out_dir, pattern)):
                os.remove(path)
        return DiskFull(f"{self.out_dir}: the disk is full; temporary files removed, the run's last finished "
                        f"round is kept: free some space and run the same command again to resume")
