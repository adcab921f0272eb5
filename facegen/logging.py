"""Experiment trackers behind one small interface, so the trainer never imports wandb itself.

`conf/logger/*.yaml` instantiates one of these (partially); the trainer completes it with the run
dir and the resolved config: logger(run_dir=..., config=..., run_id=...).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Mapping


class Logger:
    """No tracker: the trainer's own metrics.jsonl and PNGs are all there is."""

    run_id: str | None = None

    def __init__(self, run_dir: str | os.PathLike = ".", config: Mapping | None = None,
                 run_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_images(self, images: Mapping[str, str | os.PathLike], step: int) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, name: str, kind: str = "model") -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class CSVLogger(Logger):
    """One CSV row per logged step in <run dir>/metrics.csv (columns grow as new keys appear)."""

    def __init__(self, run_dir: str | os.PathLike = ".", config: Mapping | None = None,
                 run_id: str | None = None, filename: str = "metrics.csv") -> None:
        super().__init__(run_dir, config, run_id)
        self.path = self.run_dir / filename
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():  # a resumed run appends to its own file
            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.append({"step": step, **metrics})
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


class JSONLWriter:
    """Appends one JSON object per line; the trainer's metrics.jsonl."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
