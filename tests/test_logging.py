"""The loggers: W&B offline runs read back with wandb's own reader, resume, errors, config wiring."""
from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image

from facegen.logging import CSVLogger, WandbLogger, hydra_job_identity, sqlite_url
from tests.conftest import CONF, compose_config


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """No prompts, no network, and wandb's caches (artifact staging too) inside the test's tmp dir."""
    home = tmp_path / "wandb_home"
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(var, raising=False)
    return wandb_subprocess_env(home)


def wandb_subprocess_env(home: Path) -> dict[str, str]:
    """The environment for a `python -m facegen.train` child: W&B quiet and sandboxed, never online."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", WANDB_CONFIG_DIR=str(home / "config"), WANDB_CACHE_DIR=str(home / "cache"),
               WANDB_DATA_DIR=str(home / "data"))
    return env


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline run folders W&B wrote under <run dir>/wandb/, oldest first."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def wandb_records(offline_run: Path) -> list[dict]:
    """Every record of the run's .wandb transaction log, decoded by wandb's own reader.

    The reader behind `wandb leet inspect --json RUN_DIR`, called as that command calls it, without
    the CLI's own start-up (seconds of imports per call).
    """
    from wandb.util import get_core_path

    (log,) = Path(offline_run).glob("run-*.wandb")
    out = subprocess.run([get_core_path(), "leet", "inspect", "--json", "--no-observability", "--run-file", str(log),
                          str(log.parent.parent)], capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def run_record(records: list[dict]) -> dict:
    return next(r["run"] for r in records if r["type"] == "run")


def history(records: list[dict]) -> list[dict]:
    return [r["history"] for r in records if r["type"] == "history"]


def history_keys(records: list[dict]) -> set[str]:
    return {k.split(".")[0] for h in history(records) for k in h["item"]}


def exit_code(records: list[dict]) -> int:
    return next(r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit")


def config_of(records: list[dict]) -> dict:
    """The run config as W&B stores it: {key: value}, with nested dicts kept nested."""
    cfg = run_record(records)["config"]["update"]
    return {k: v for k, v in cfg.items() if k != "_wandb"}


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


CONFIG = {"task_name": "train", "tags": ["unit"], "loss": {"kl_weight": 0.5, "gamma": 0.01},
          "model": {"encoder": {"widths": [8, 8]}}}


def test_offline_run_holds_config_metrics_and_images(wandb_env, tmp_path):
    logger = WandbLogger(tmp_path / "run", CONFIG, None)
    assert logger.run_id
    for step in (2, 4):
        logger.log_metrics({"loss/kl": 1.0 / step, "gate/discriminator": 1.0, "epoch": step / 4}, step)
    logger.log_metrics({"val/loss": 3.5}, 4)
    logger.log_images({"samples": png(tmp_path / "run" / "samples" / "epoch_001.png")}, 4)
    logger.finish(0)

    (run,) = offline_runs(tmp_path / "run")
    assert run.name.endswith(logger.run_id)
    records = wandb_records(run)
    meta = run_record(records)
    assert meta["project"] == "facegen" and meta["tags"] == ["unit"]
    assert meta["display_name"] == "train"  # no Hydra job: the task name
    assert "run_group" not in meta  # a single run is in no group
    assert config_of(records)["loss"] == {"kl_weight": 0.5, "gamma": 0.01}  # nested, not flattened
    assert config_of(records)["model"]["encoder"]["widths"] == [8, 8]
    rows = {h["step"].get("num", 0): h["item"] for h in history(records)}
    assert rows[2]["loss/kl"] == 0.5
    assert rows[4]["loss/kl"] == 0.25 and rows[4]["val/loss"] == 3.5  # same step: one row
    assert rows[4]["samples._type"] == "image-file"
    assert (run / "files" / rows[4]["samples.path"]).is_file()
    assert exit_code(records) == 0


def test_resume_continues_the_same_run(wandb_env, tmp_path):
    first = WandbLogger(tmp_path / "run", CONFIG, None)
    first.log_metrics({"loss/kl": 1.0}, 1)
    first.finish(143)  # stopped by SIGTERM
    time.sleep(1.1)  # offline dirs are named by the second they start in: a real resume is later anyway
    second = WandbLogger(tmp_path / "run", CONFIG, first.run_id)
    second.log_metrics({"loss/kl": 0.5}, 2)
    second.finish(0)

    assert second.run_id == first.run_id
    runs = offline_runs(tmp_path / "run")
    assert len(runs) == 2 and all(r.name.endswith(first.run_id) for r in runs)  # `wandb sync` joins them
    resumed = wandb_records(runs[1])
    assert run_record(resumed)["run_id"] == first.run_id and run_record(resumed)["resume"] is True
    assert exit_code(wandb_records(runs[0])) == 143 and exit_code(resumed) == 0


def test_finish_after_error_closes_the_run_once(wandb_env, tmp_path):
    import wandb

    logger = WandbLogger(tmp_path / "run", CONFIG, None)
    logger.finish(1)
    logger.finish(1)  # train()'s finally may call it again: a no-op
    assert wandb.run is None  # the next job of a multirun starts a run of its own
    assert exit_code(wandb_records(offline_runs(tmp_path / "run")[0])) == 1


@pytest.mark.parametrize("exit_status, uploaded", [(0, True), (1, False)])
def test_final_checkpoint_is_an_artifact_only_when_asked_and_finished(wandb_env, tmp_path, exit_status, uploaded):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
    logger = WandbLogger(run_dir, CONFIG, None, log_checkpoint=True)
    logger.finish(exit_status)
    artifacts = [r["artifact"] for r in wandb_records(offline_runs(run_dir)[0]) if r["type"] == "artifact"]
    assert [(a["type"], a["name"]) for a in artifacts] == ([("model", f"checkpoint-{logger.run_id}")] if uploaded
                                                          else [])


def test_disabled_mode_writes_nothing(wandb_env, tmp_path):
    logger = WandbLogger(tmp_path / "run", CONFIG, None, mode="disabled")
    logger.log_metrics({"loss/kl": 1.0}, 1)
    logger.finish(0)
    assert offline_runs(tmp_path / "run") == []


def test_bad_mode_is_a_clear_error(wandb_env, tmp_path):
    from facegen.cli import user_errors
    from facegen.logging import LoggerError

    with pytest.raises(LoggerError, match="logger.mode .*WANDB_MODE.* got 'cloud'"):
        WandbLogger(tmp_path / "run", CONFIG, None, mode="cloud")
    assert LoggerError in user_errors()   # one line and exit 2 from the CLI, no traceback


def test_online_without_a_login_says_how_to_log_in_or_go_offline(wandb_env, tmp_path, monkeypatch):
    from facegen.logging import LoggerError

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(LoggerError, match=r"logger.mode=online\) could not start a run: .*wandb login.*wandb sync"):
        WandbLogger(tmp_path / "run", CONFIG, None, mode="online")


@pytest.mark.parametrize("env, override, expected", [
    (None, None, "offline"),            # the default: no account, no network
    ("", None, ""),                     # an empty WANDB_MODE: the logger reads '' as unset (offline)
    ("online", None, "online"),         # WANDB_MODE picks it
    ("online", "offline", "offline"),   # the command line wins over WANDB_MODE
    (None, "disabled", "disabled"),
])
def test_mode_comes_from_the_command_line_then_wandb_mode(monkeypatch, tmp_path, env, override, expected):
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    cfg = compose_config("train", ["logger=wandb"] + ([f"logger.mode={override}"] if override else []),
                         output_dir=tmp_path)
    assert cfg.logger.mode == expected


def test_empty_wandb_mode_env_does_not_break_wandb(wandb_env, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "")  # wandb itself rejects '' even when given a mode
    cfg = compose_config("train", ["logger=wandb"], output_dir=tmp_path)
    from hydra.utils import instantiate

    logger = instantiate(cfg.logger)(run_dir=tmp_path / "run", config=CONFIG, run_id=None)
    logger.finish(0)
    assert len(offline_runs(tmp_path / "run")) == 1


def test_wandb_is_the_default_and_the_config_resolves_without_a_hydra_run(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_config("train", [], output_dir=tmp_path)
    assert cfg.logger._target_ == "facegen.logging.WandbLogger"
    resolved = OmegaConf.to_container(cfg, resolve=True)  # what the trainer hands the logger
    assert resolved["logger"]["mode"] == "offline"
    assert resolved["logger"]["name"] is None and resolved["logger"]["group"] is None
    assert resolved["logger"]["tags"] == resolved["tags"]


@pytest.mark.parametrize("mode, group", [("RUN", None), ("MULTIRUN", "outputs/multirun/sweep")])
def test_run_name_and_group_come_from_the_hydra_job(mode, group):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["optimizer.lr=0.001", "loss.kl_weight=0.5", "trainer.resume=auto"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.sweep.dir = "outputs/multirun/sweep"
    try:
        HydraConfig.instance().set_config(cfg)
        # sorted as in hydra.job.override_dirname; trainer.resume says how the job runs, not what it is
        assert hydra_job_identity() == ("loss.kl_weight=0.5,optimizer.lr=0.001", group)
    finally:
        HydraConfig.instance().cfg = None
    assert hydra_job_identity() == (None, None)


@pytest.mark.filterwarnings("ignore:Deprecated API features detected")  # optuna 2 on SQLAlchemy 1.4
def test_sqlite_url_creates_the_study_folder(tmp_path):
    import optuna

    url = sqlite_url(tmp_path / "optuna" / "study.db")
    assert url == f"sqlite:///{tmp_path}/optuna/study.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1


def test_csv_logger_appends_across_a_resume(tmp_path):
    first = CSVLogger(tmp_path, {}, None)
    first.log_metrics({"loss/kl": 1.0}, 1)
    second = CSVLogger(tmp_path, {}, None)
    second.log_metrics({"loss/kl": 0.5, "val/loss": 2.0}, 2)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss/kl"], r["val/loss"]) for r in rows] == [("1", "1.0", ""), ("2", "0.5", "2.0")]


def test_a_resumed_run_rewinds_the_csv_and_jsonl_records_past_its_checkpoint(tmp_path):
    from facegen.logging import JSONLWriter

    log = CSVLogger(run_dir=tmp_path)
    for step in (2, 4, 6):
        log.log_metrics({"loss/kl": float(step)}, step)
    again = CSVLogger(run_dir=tmp_path)   # the process killed at step 6, resumed from a checkpoint at 4
    again.rewind(4)
    again.log_metrics({"loss/kl": 6.5}, 6)
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [(r["step"], r["loss/kl"]) for r in csv.DictReader(f)] == [("2", "2.0"), ("4", "4.0"), ("6", "6.5")]
    CSVLogger(run_dir=tmp_path).rewind(0)   # a fresh start: the earlier file is kept aside
    assert (tmp_path / "metrics.csv.1").is_file() and not (tmp_path / "metrics.csv").exists()

    writer = JSONLWriter(tmp_path / "metrics.jsonl")
    for step in (2, 4, 6):
        writer.write({"step": step})
    with open(writer.path, "a") as f:
        f.write('{"step": 8, "los')   # torn by kill -9 mid-write
    assert writer.keep_until(4) == 2
    assert [json.loads(s)["step"] for s in writer.path.read_text().splitlines()] == [2, 4]
    assert writer.set_aside() == tmp_path / "metrics.jsonl.1" and writer.set_aside() is None


def test_each_earlier_attempt_is_kept_under_its_own_number(tmp_path):
    """Three fresh starts in one run dir: attempts 1 and 2 stay as metrics.jsonl.1 and .2 (and metrics.csv.1
    and .2); a later start never overwrites an earlier attempt's record."""
    from facegen.logging import JSONLWriter

    writer = JSONLWriter(tmp_path / "metrics.jsonl")
    for attempt in (1, 2, 3):
        writer.write({"step": 1, "attempt": attempt})
        log = CSVLogger(run_dir=tmp_path)
        log.rewind(0)
        log.log_metrics({"attempt": attempt}, 1)
        if attempt < 3:
            assert writer.set_aside() == tmp_path / f"metrics.jsonl.{attempt}"
    for n in (1, 2):
        assert json.loads((tmp_path / f"metrics.jsonl.{n}").read_text())["attempt"] == n
        with open(tmp_path / f"metrics.csv.{n}", newline="") as f:
            assert [r["attempt"] for r in csv.DictReader(f)] == [str(n)]
    assert json.loads(writer.path.read_text())["attempt"] == 3


def test_csv_columns_are_the_union_of_all_rows_and_a_rewind_rewrites_the_file(tmp_path):
    """A step that logs only validation keys after steps that logged only training keys: every column
    stays, empty where a row has no value (no ValueError from the CSV writer); and a rewind rewrites
    metrics.csv at once, so the file never shows steps the resumed run has not redone."""
    log = CSVLogger(run_dir=tmp_path)
    log.log_metrics({"loss/kl": 1.0}, 1)
    log.log_metrics({"val/loss": 2.0}, 2)
    log.log_metrics({"loss/kl": 0.5, "lr": 1e-3}, 3)
    with open(tmp_path / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["step", "loss/kl", "val/loss", "lr"]
        assert [tuple(r.values()) for r in reader] == [("1", "1.0", "", ""), ("2", "", "2.0", ""),
                                                       ("3", "0.5", "", "0.001")]
    CSVLogger(run_dir=tmp_path).rewind(2)
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["1", "2"]
