"""Turn the seed project's raw VAE_v1 state dict into a full facegen checkpoint, to train on from it.

    python scripts/import_seed_checkpoint.py ../shared/seed/VAE_epoch_100.pth outputs/seed_vae.pt
    python -m facegen.train model=seed_vae loss=vae trainer.resume=outputs/seed_vae.pt

The result has the layout of a facegen training checkpoint (config model=seed_vae, loss=vae,
step 0, fresh optimizer state), so every entry point and `trainer.resume=PATH` accept it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_seed_checkpoint(src: str | Path, dst: str | Path, overrides: list[str] | None = None) -> Path:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from facegen.checkpoint import (CheckpointError, atomic_save, is_seed_state_dict, load_state,
                                    read_checkpoint, rng_state, split_seed_state_dict)
    from facegen.models import build_model
    from facegen.trainer import build_optimizers
    from facegen.utils import provenance
    from omegaconf import OmegaConf

    raw = read_checkpoint(src)
    if not is_seed_state_dict(raw):
        raise CheckpointError(f"{src}: not the seed project's VAE_v1 state dict (expected keys such as "
                              "fc_var.weight and decoder_input.weight)")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["model=seed_vae", "loss=vae", "optimizer.lr=1e-3", "optimizer.betas=[0.9,0.999]",
                                *(overrides or [])])
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(dst).parent)
    model = build_model(cfg.model, with_discriminator=False)
    enc, dec = split_seed_state_dict(raw)
    load_state(model.encoder, enc, "encoder", str(src))
    load_state(model.decoder, dec, "decoder", str(src))
    nets = {"encoder": model.encoder, "decoder": model.decoder}
    optimizers, schedulers = build_optimizers(cfg.optimizer, nets, int(cfg.trainer.epochs))
    ckpt = {
        "format_version": 1,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": {n: m.state_dict() for n, m in nets.items()},
        "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
        "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
        "ema_n_averaged": 0, "step": 0, "epoch": 0, "batch_in_epoch": 0, "elapsed": 0.0, "finished": False,
        "rng": rng_state(), "metrics": {}, "logger_run_id": None,
        "provenance": {**provenance(), "imported_from": str(Path(src).resolve())},
    }
    return atomic_save(ckpt, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="the seed's state dict, e.g. ../shared/seed/VAE_epoch_100.pth")
    parser.add_argument("dst", help="where to write the facegen checkpoint (.pt)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data=age_gender")
    args = parser.parse_args(argv)
    from facegen.cli import run_or_explain

    out = run_or_explain(import_seed_checkpoint, args.src, args.dst, args.overrides)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
