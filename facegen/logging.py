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


def set_aside(path: Path) -> Path:
    """Rename an earlier attempt's file to <name>.1 (.2, ... the first free one); returns the new path."""
    n = 1
    while (aside := path.with_name(f"{path.name}.{n}")).exists():
        n += 1
    os.replace(path, aside)
    return aside


class LoggerError(Exception):
    """The tracker cannot start as configured (a bad logger.mode, W&B online without login or network)."""


class Logger:
    """No tracker: the trainer's own metrics.jsonl and PNGs are all there is."""

    run_id: str | None = None

    def __init__(self, run_dir: str | os.PathLike = ".", config: Mapping | None = None,
                 run_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)

    def rewind(self, step: int) -> None:
        """The run (re)starts at ``step``: what was logged after it is logged again from here."""

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

    def rewind(self, step: int) -> None:
        """Rows after ``step`` go (a resumed run logs them again); at step 0 an earlier attempt's file
        is kept as metrics.csv.1 (.2, ...) and this run starts a new one."""
        if step == 0 and self.rows:
            set_aside(self.path)
            self.rows = []
            return
        kept = [r for r in self.rows if int(float(r.get("step") or 0)) <= int(step)]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._write()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.append({"step": step, **metrics})
        self._write()

    def _write(self) -> None:
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


WANDB_MODES = ("offline", "online", "disabled")
# overrides that say how a job runs, not what it is: kept out of W&B run names
NOT_IN_RUN_NAME = ("trainer.resume",)


def hydra_job_identity() -> tuple[str | None, str | None]:
    """(run name, group) of the current Hydra job: its overrides, and the sweep dir in a multirun.

    Both are None outside a Hydra run (hydra.compose in tests, a notebook), where HydraConfig is unset.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    overrides = sorted(o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") not in NOT_IN_RUN_NAME)
    group = str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    return ",".join(overrides) or None, group


def sqlite_url(path: str | os.PathLike) -> str:
    """sqlite:/// URL of a study file (Optuna's storage), creating its folder: sqlite won't, and fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class WandbLogger(Logger):
    """Weights & Biases, offline by default: each job's run lives in <run dir>/wandb/, `wandb sync` uploads it.

    A resumed job passes the run id stored in its checkpoint, so W&B continues the same run (one curve).
    """

    def __init__(self, run_dir: str | os.PathLike = ".", config: Mapping | None = None,
                 run_id: str | None = None, *, project: str = "facegen", entity: str | None = None,
                 mode: str | None = "offline", name: str | None = None, group: str | None = None,
                 tags: list[str] | tuple[str, ...] | None = None, job_type: str | None = None,
                 log_checkpoint: bool = False, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(run_dir, config, run_id)
        mode = (mode or "offline").strip().lower()  # an empty WANDB_MODE counts as unset
        if mode not in WANDB_MODES:
            raise LoggerError(f"logger.mode (or WANDB_MODE) must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
        if os.environ.get("WANDB_MODE", None) == "":
            del os.environ["WANDB_MODE"]  # wandb itself rejects an empty WANDB_MODE even when mode is given
        import wandb

        config = dict(config or {})
        job_name, job_group = hydra_job_identity()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_checkpoint = bool(log_checkpoint)
        try:
            self.run = wandb.init(
                project=project, entity=entity, mode=mode, dir=str(self.run_dir), config=config,
                name=name or job_name or config.get("task_name"), group=group or job_group,
                tags=[str(t) for t in (tags if tags is not None else config.get("tags") or [])],
                job_type=job_type, id=run_id, resume="allow" if run_id else None,
                settings=wandb.Settings(**dict(settings or {})))
        except wandb.errors.Error as e:   # no API key, no network (after wandb's own init_timeout)
            why = next((s.strip() for s in str(e).splitlines() if s.strip()), type(e).__name__)
            raise LoggerError(
                f"W&B (logger.mode={mode}) could not start a run: {why[:200]}. Log in with `wandb login` (or set "
                "WANDB_API_KEY) and check the network; or log offline (logger.mode=offline, the default) and "
                f"upload later with `wandb sync {self.run_dir}/wandb/offline-run-*`.") from e
        self.run_id = self.run.id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=int(step))

    def log_images(self, images: Mapping[str, str | os.PathLike], step: int) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path), caption=Path(path).stem) for name, path in images.items()},
                     step=int(step))

    def log_artifact(self, path: str | os.PathLike, name: str, kind: str = "model") -> None:
        import wandb

        artifact = wandb.Artifact(name, type=kind)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        """Closes the run (also after an error), so the next job of a multirun gets a run of its own."""
        if self.run is None:
            return
        try:
            last = self.run_dir / "checkpoints" / "last.pt"
            if self.log_checkpoint and exit_code == 0 and last.is_file():
                self.log_artifact(last, f"checkpoint-{self.run_id}", "model")
        finally:
            self.run.finish(exit_code=exit_code)
            self.run = None


class JSONLWriter:
    """Appends one JSON object per line; the trainer's metrics.jsonl."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def keep_until(self, step: int) -> int:
        """Drop the records after ``step`` (a resumed run writes them again); returns how many went.
        A torn last line (the process killed mid-write) goes too."""
        if not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                keep = int(json.loads(line).get("step", 0)) <= int(step)
            except (ValueError, AttributeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        return dropped

    def set_aside(self) -> Path | None:
        """A non-empty file of an earlier attempt becomes metrics.jsonl.1 (.2, ...); returns its new path."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        return set_aside(self.path)
