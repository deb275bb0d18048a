"""The run folder: one directory holding everything a training run produced.

Layout (`runs/<YYYYmmdd-HHMMSS>-<model>/`)::

    config.yaml          resolved RunConfig (accepted by `tfpipeline train --config`)
    run.json             status, timings, threshold, tfpipeline/TF versions, data summary
    classes.json         class names, positive class
    splits/<split>.csv   the files of each split (path,label) for file-based data
    history.csv          per-epoch metrics (CSVLogger), train and val
    checkpoints/best.keras, checkpoints/last.keras
    backup/              BackupAndRestore state, for `train --resume`
    tensorboard/         scalars, ROC and confusion-matrix images per epoch
    metrics.json         final val (and test) metrics
    plots/*.png          learning curves, ROC, PR, confusion matrices
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfpipeline.config import RunConfig
from tfpipeline.config_io import from_dict, load_yaml, to_dict, write_yaml
from tfpipeline.errors import UserError


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder; creating the object touches nothing on disk."""

    path: Path

    @classmethod
    def create(cls, parent: str | Path, model_name: str) -> RunFolder:
        """Make a new, uniquely named run folder under `parent`."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        parent = Path(parent)
        for suffix in [""] + [f"-{n}" for n in range(2, 100)]:
            path = parent / f"{stamp}-{model_name}{suffix}"
            try:
                path.mkdir(parents=True)
                return cls(path)
            except FileExistsError:
                continue
        raise UserError(f"could not create a new run folder under {parent}")

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder; UserError when `path` is not one."""
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise UserError(f"{path}: not a tfpipeline run folder (no config.yaml)")
        return cls(path)

    # -- files
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    @property
    def history_file(self) -> Path:
        return self.path / "history.csv"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.keras"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.keras"

    @property
    def backup_dir(self) -> Path:
        return self.path / "backup"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    # -- reading and writing
    def write_config(self, config: RunConfig) -> None:
        write_yaml(self.config_file, to_dict(config))

    def read_config(self) -> RunConfig:
        return from_dict(RunConfig, load_yaml(self.config_file), where=str(self.config_file))

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.path}: missing {name} (was the run finished?)") from None

    def write_json(self, name: str, values: dict[str, Any]) -> None:
        (self.path / name).write_text(json.dumps(values, indent=2, default=jsonable))

    def update_run_info(self, **values: Any) -> None:
        """Merge `values` into run.json (created on first use)."""
        current = json.loads(self.run_file.read_text()) if self.run_file.exists() else {}
        current.update(values)
        self.write_json("run.json", current)

    def write_split_files(self, files: dict[str, list[list[Any]]], class_names: tuple[str, ...]) -> None:
        """One CSV per split: path, label index, class name."""
        if not files:
            return
        folder = self.path / "splits"
        folder.mkdir(exist_ok=True)
        for split, rows in files.items():
            with open(folder / f"{split}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "label", "class"])
                writer.writerows([path, label, class_names[label]] for path, label in rows)

    def model_checkpoint(self) -> Path:
        """The checkpoint to evaluate or export: best when present, else last."""
        for path in (self.best_checkpoint, self.last_checkpoint):
            if path.is_file():
                return path
        raise UserError(f"{self.path}: no checkpoint in {self.path / 'checkpoints'} (did training run?)")


def jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars/arrays and paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
