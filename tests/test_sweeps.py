"""Sweeps for real: a Hydra multirun logging to W&B offline, a failing job among good ones, an Optuna
search continued from its sqlite study, and the launcher and W&B-sweep configs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, compose_config, tiny_overrides
from tests.test_logging import (config_of, exit_code, history_keys, offline_runs, run_record, wandb_records,
                                wandb_subprocess_env)

# what the trainer logs at each step and each epoch end (see Trainer._log, _end_epoch)
LOGGED = {"loss/kl", "loss/feature_reconstruction", "loss/gan_generator", "loss/gan_discriminator",
          "gate/decoder_gan", "gate/discriminator", "lr/encoder", "lr/decoder", "lr/discriminator",
          "perf/img_per_s", "epoch", "val/loss", "val/recon_mse", "val/kl", "samples", "reconstructions"}


def tiny(*extra: str) -> list[str]:
    """conftest's tiny config on one CPU thread: two spinning threads on a busy 2-core box are 10x slower."""
    return tiny_overrides("trainer.num_threads=1", *extra)


def train_cli(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m facegen.train ARGS` from the repository root, as a user types it."""
    return subprocess.run([sys.executable, "-m", "facegen.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def hydra_compose(overrides: list[str]):
    """The composed config with its hydra node, as a launcher or sweeper sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides, return_hydra_config=True)


def test_multirun_gives_each_job_its_dir_checkpoints_and_wandb_run_in_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    result = train_cli("-m", *tiny("logger=wandb"), "loss.kl_weight=0.5,1", f"hydra.sweep.dir={sweep}",
                       env=wandb_subprocess_env(tmp_path / "wandb_home"))
    assert result.returncode == 0, result.stderr[-4000:]

    groups, ids = set(), set()
    for job, kl_weight in ((sweep / "0", 0.5), (sweep / "1", 1)):
        assert (job / "checkpoints" / "last.pt").is_file() and (job / "metrics.jsonl").is_file()
        assert yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[-1] == f"loss.kl_weight={kl_weight}"
        (run,) = offline_runs(job)  # <job dir>/wandb/offline-run-*: one run per job, never merged
        records = wandb_records(run)
        meta = run_record(records)
        groups.add(meta.get("run_group"))
        ids.add(meta["run_id"])
        assert f"loss.kl_weight={kl_weight}" in meta["display_name"].split(",")  # named by its overrides
        config = config_of(records)
        assert config["loss"]["kl_weight"] == kl_weight and config["paths"]["output_dir"] == str(job)
        assert LOGGED <= history_keys(records)
        assert exit_code(records) == 0
    assert groups == {str(sweep)}  # the sweep is one W&B group
    assert len(ids) == 2


def test_a_failed_job_does_not_lose_the_other_jobs(tmp_path):
    """Hydra's basic launcher runs every job of the batch, then fails the command with the first error."""
    sweep = tmp_path / "sweep"
    # log_every=0 crashes job 0 at its first step (after its W&B run started); job 1 is fine
    result = train_cli("-m", *tiny("logger=wandb", "trainer.max_steps=2"), "trainer.log_every=0,1",
                       f"hydra.sweep.dir={sweep}", env=wandb_subprocess_env(tmp_path / "wandb_home"))
    assert result.returncode != 0
    assert "ZeroDivisionError" in result.stderr
    failed, good = sweep / "0", sweep / "1"
    assert exit_code(wandb_records(offline_runs(failed)[0])) == 1  # finished, marked failed, not left open
    assert not (failed / "checkpoints" / "last.pt").exists()
    assert (good / "checkpoints" / "last.pt").is_file() and (good / "metrics.jsonl").is_file()
    good_records = wandb_records(offline_runs(good)[0])
    assert exit_code(good_records) == 0 and "loss/kl" in history_keys(good_records)


def test_a_job_stopped_by_a_training_error_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    # feature_layer=99 is a TrainingError at the first step, as a NaN loss would be
    result = train_cli("-m", *tiny("logger=none", "trainer.max_steps=1"), "loss.feature_layer=99,3",
                       f"hydra.sweep.dir={sweep}", env=wandb_subprocess_env(tmp_path / "wandb_home"))
    assert result.returncode != 0 and "not a layer of the discriminator" in result.stderr
    assert (sweep / "1" / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")  # optuna 2 on SQLAlchemy 1.4
def test_optuna_search_finishes_and_a_second_invocation_continues_the_study(tmp_path):
    import optuna

    study_db = tmp_path / "optuna" / "study.db"
    env = wandb_subprocess_env(tmp_path / "wandb_home")
    common = [*tiny("logger=none", "data.num_images=48"), "hparams_search=vaegan_optuna",
              "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage.path={study_db}",
              # the three trials of a batch at once, in joblib worker processes
              "hydra.sweeper.n_jobs=3", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3"]
    first = train_cli(*common, f"hydra.sweep.dir={tmp_path / 'first'}", env=env)
    assert first.returncode == 0, first.stderr[-4000:]

    results = yaml.safe_load((tmp_path / "first" / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"loss.kl_weight", "loss.gamma", "loss.margin", "optimizer.lr"}
    study = optuna.load_study(study_name="vaegan_optuna", storage=f"sqlite:///{study_db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert results["best_value"] == pytest.approx(study.best_value)
    for n in range(3):  # each trial a job dir with its own checkpoints and the suggested overrides
        job = tmp_path / "first" / str(n)
        assert (job / "checkpoints" / "last.pt").is_file()
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"loss.kl_weight={study.trials[n].params['loss.kl_weight']}" in overrides

    second = train_cli(*common, "hydra.sweeper.sampler.seed=7", f"hydra.sweep.dir={tmp_path / 'second'}", env=env)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "Using an existing study with name 'vaegan_optuna'" in second.stderr + second.stdout
    study = optuna.load_study(study_name="vaegan_optuna", storage=f"sqlite:///{study_db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert [t.number for t in study.trials] == list(range(6))


def test_search_space_names_real_config_keys_and_the_study_lives_outside_the_sweep_dir():
    cfg = hydra_compose(["hparams_search=vaegan_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert cfg.optimized_metric == "val/loss" and cfg.hydra.mode.name == "MULTIRUN"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    for key in sweeper.params:  # a typo here would only fail at the first trial
        assert OmegaConf.select(cfg, key) is not None, key
    assert set(sweeper.params) >= {"loss.kl_weight", "loss.gamma", "optimizer.lr", "loss.margin"}
    study = Path(sweeper.storage.path)
    assert study.name == "vaegan_optuna.db"
    assert Path(cfg.hydra.sweep.dir) not in study.parents  # a new sweep dir per invocation, one study


def test_local_parallel_launcher_is_joblib():
    launcher = hydra_compose(["hydra/launcher=local_parallel"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 2 and launcher.backend == "loky"
    assert type(instantiate(launcher)).__name__ == "JoblibLauncher"


@pytest.mark.parametrize("search", [[], ["hparams_search=vaegan_optuna"]])
def test_slurm_launcher_composes_with_requeue_on_timeout_and_preemption(search):
    cfg = hydra_compose(["hydra/launcher=slurm", *search])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.signal_delay_s >= 60  # USR2 before the time limit: submitit checkpoints and requeues
    assert launcher.max_num_timeout > 0  # ... and may do so repeatedly
    assert launcher.timeout_min > launcher.signal_delay_s / 60
    assert launcher.submitit_folder.startswith(str(cfg.hydra.sweep.dir))
    slurm = instantiate(launcher)  # every key is one the plugin accepts
    assert slurm.params["max_num_timeout"] == launcher.max_num_timeout


def test_wandb_sweep_runs_facegen_train_with_hydra_overrides(tmp_path):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep = yaml.safe_load((ROOT / "scripts" / "wandb_sweep.yaml").read_text())
    command = sweep["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "facegen.train"] and command[-1] == "${args_no_hyphens}"
    assert "logger.mode=online" in command  # an offline run never reports back to the sweep
    assert sweep["metric"]["name"] == "val/loss" and sweep["metric"]["goal"] == "minimize"
    # what `wandb agent` appends for one suggestion: key=value, no dashes, i.e. Hydra overrides
    suggestion = {k: {"value": spec.get("min", spec.get("values", [None])[0])} for k, spec in sweep["parameters"].items()}
    args = create_sweep_command_args({"args": suggestion})["args_no_hyphens"]
    fixed = [c for c in command if not c.startswith("${") and c not in ("-m", "facegen.train")]
    cfg = compose_config("train", [*fixed, *args], output_dir=tmp_path)
    for key, spec in suggestion.items():
        assert OmegaConf.select(cfg, key) == spec["value"], key
