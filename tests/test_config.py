"""Every group option composes with hydra.compose and instantiates; unknown keys are refused."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from facegen.models import build_model
from tests.conftest import CONF, ROOT, compose_config

GROUPS = ["data", "model", "loss", "optimizer", "trainer", "logger", "debug", "experiment"]
DATA_PATHS = {"age_gender": "../shared/data/age_gender_sample.csv", "folder": "../shared/data/fer2013/validation",
              "fer2013": "../shared/data/fer2013/validation"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_config("train", [f"{group}={option}"], output_dir=Path("/tmp/facegen-compose"))
    assert cfg[group if group not in ("debug", "experiment") else "trainer"] is not None


@pytest.mark.parametrize("preset", options("model"))
@pytest.mark.parametrize("net", ["encoder", "decoder", "discriminator"])
def test_every_network_option_instantiates_inside_every_preset(preset, net):
    for option in options(f"model/{net}"):
        cfg = compose_config("train", [f"model={preset}", f"model/{net}={option}"])
        model = build_model(cfg.model)
        assert getattr(model, net) is not None


@pytest.mark.parametrize("option", options("loss") + options("logger") + options("optimizer"))
def test_loss_logger_optimizer_options_instantiate(option, tmp_path):
    for group in ("loss", "logger", "optimizer"):
        if option in options(group):
            cfg = compose_config("train", [f"{group}={option}"], output_dir=tmp_path)
            if group == "optimizer":
                from facegen.trainer import build_optimizers
                net = build_model(cfg.model).encoder
                opts, _ = build_optimizers(cfg.optimizer, {"encoder": net}, 3)
                assert opts["encoder"].param_groups[0]["lr"] == cfg.optimizer.lr
            elif group == "logger":
                assert callable(instantiate(cfg.logger))
            else:
                assert hasattr(instantiate(cfg.loss), "needs_discriminator")


@pytest.mark.parametrize("option", options("data"))
def test_every_data_option_instantiates(option, tmp_path):
    path = DATA_PATHS.get(option)
    if option.endswith("_csv"):
        pytest.skip("needs the full fer2013.csv, which is not shipped")
    over = [f"data={option}"] + ([f"data.path={ROOT / path}"] if path else [])
    if option == "fer2013":
        over.append("data.val_path=null")
    if path and not (ROOT / path).exists():
        pytest.skip(f"{path} not present")
    cfg = compose_config("train", over + ["data.limit=40"] + (["data.num_images=40"] if option == "synthetic" else []),
                         output_dir=tmp_path)
    dm = instantiate(cfg.data).setup()
    assert len(dm.train) + len(dm.val) == 40


def test_unknown_keys_and_options_are_refused():
    with pytest.raises(ConfigCompositionException):
        compose_config("train", ["trainer.epochz=3"])
    with pytest.raises(ConfigCompositionException):
        compose_config("train", ["model=dcgann"])
    cfg = compose_config("train")
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        cfg.trainer.epochz = 3  # struct mode: a typo is an error, never a silent new key


def test_cli_refuses_a_misspelled_key_with_hydras_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "facegen.train", "loss.kl_weigth=0.5", f"hydra.run.dir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "kl_weigth" in out.stderr and "Traceback" not in out.stderr


def test_configuration_reference_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_docs.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
