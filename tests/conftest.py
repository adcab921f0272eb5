"""Shared fixtures: the real configs, composed with hydra.compose and shrunk for a fast CPU run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED = ROOT.parent / "shared"
SEED_CKPT = SHARED / "seed" / "VAE_epoch_100.pth"
FER = SHARED / "data" / "fer2013"
SAMPLE_CSV = SHARED / "data" / "age_gender_sample.csv"

# One torch thread for the suite: its tiny networks gain nothing from a second one, and on a
# busy 2-core machine two threads spin-waiting on each other made tests ~10x slower.
torch.set_num_threads(1)


def compose_config(config_name: str = "train", overrides: list[str] | None = None,
                   output_dir: Path | None = None) -> DictConfig:
    """The real config tree, composed as `python -m facegen.<entry>` would see it (no Hydra run)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)
    if output_dir is not None and "paths" in cfg:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.cache_dir = str(output_dir / "cache")
    return cfg


TINY = [
    "data.num_images=96", "data.batch_size=16", "data.val_fraction=0.25",
    "trainer.epochs=1", "trainer.device=cpu", "trainer.log_every=2", "trainer.checkpoint_every=3",
    "trainer.grid_size=4", "trainer.progress_bar=false", "trainer.compile=false",
    "model.latent_dim=8", "logger=none",
]
# narrow networks per preset, so a tiny run takes seconds on a CPU
TINY_WIDTHS = {
    "dcgan": ["model.encoder.widths=[8,8,8]", "model.decoder.widths=[8,8,8]",
              "model.discriminator.widths=[4,8,8,8]", "model.discriminator.fc_width=16"],
    "resnet": ["model.encoder.widths=[8,8,8]", "model.decoder.widths=[8,8,8]",
               "model.discriminator.widths=[8,8,8]"],
    "seed_vae": ["model.encoder.hidden_dims=[8,8,8]", "model.decoder.hidden_dims=[8,8,8]",
                 "model.discriminator.widths=[4,8,8,8]", "model.discriminator.fc_width=16"],
}


def tiny_overrides(*extra: str) -> list[str]:
    """TINY, with later overrides of the same key winning (Hydra refuses duplicates)."""
    preset = next((o.split("=", 1)[1] for o in extra if o.startswith("model=")), "dcgan")
    data = next((o.split("=", 1)[1] for o in extra if o.startswith("data=")), "synthetic")
    tiny = [o for o in TINY if data == "synthetic" or not o.startswith("data.num_images")]
    merged: dict[str, str] = {}
    for o in [*tiny, *TINY_WIDTHS.get(preset, []), *extra]:
        merged[o.split("=", 1)[0]] = o
    return list(merged.values())


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*extra: str, config_name: str = "train") -> DictConfig:
        return compose_config(config_name, tiny_overrides(*extra), output_dir=tmp_path / "run")
    return make


@pytest.fixture(scope="session", autouse=True)
def _cpu_kernels_compiled():
    """numba compiles facegen's CPU kernels once (15-25 s from a clean checkout, then ~1 s from its disk
    cache): pay that before the first test, so that no test's timing includes it."""
    from facegen.models.cpu_kernels import warm_up

    warm_up()
