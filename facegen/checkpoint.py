"""Checkpoints: written atomically, holding only tensors and plain types (no pickled code).

`torch.load(path, weights_only=True)` reads every file facegen writes, and `load_model` also reads
the seed project's raw VAE_v1 state dict (VAE_epoch_100.pth).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from facegen.models.vaegan import VAEGAN, build_model
from facegen.utils import atomic_save  # noqa: F401  (checkpoints are written with it; imported from here)

FORMAT_VERSION = 1
SEED_ENCODER_PREFIXES = ("encoder.", "fc_mu.", "fc_var.")
SEED_DECODER_PREFIXES = ("decoder_input.", "decoder.", "final_layer.")


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit the model: the message says which and why."""


def read_checkpoint(path: str | os.PathLike, key: str = "checkpoint") -> dict:
    """Load a checkpoint without unpickling code; errors name the file (and the setting `key` that
    gave it) and say what to do."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = [p for p in (path / "checkpoints" / "last.pt", path / "last.pt") if p.is_file()]
        hint = f" (did you mean {key}={inside[0]}?)" if inside else ""
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file{hint}; give {key}=PATH to a .pt "
                              "file, e.g. outputs/<date>/<time>/checkpoints/last.pt")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (give {key}=PATH to a .pt file, "
                              "e.g. outputs/<date>/<time>/checkpoints/last.pt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: is empty (0 bytes; an interrupted copy?); copy it again, or give "
                              "another checkpoint (the run's epoch_*.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or one that holds pickled objects
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        pickled = next((s for s in lines if "Unsupported global" in s), None)
        if pickled is None:   # not a pickle problem: the bytes themselves are damaged
            raise CheckpointError(f"{path}: truncated or corrupt ({type(e).__name__}: {lines[0][:200] if lines else ''}"
                                  "); an interrupted copy or download? Copy it again, or give another checkpoint "
                                  "(the run's epoch_*.pt)") from e
        raise CheckpointError(f"{path}: cannot be read as a weights-only checkpoint ({type(e).__name__}: "
                              f"{pickled[:300]}). facegen never unpickles code; re-save the file as a plain "
                              "state dict of tensors, or give a facegen checkpoint.") from e


# -- random number generator state as plain types -------------------------------------------------
def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and plain types (weights_only refuses numpy objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


# -- state dicts ---------------------------------------------------------------------------------
def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP / torch.compile / AveragedModel wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel) or type(module).__name__ == "AveragedModel":
            module = module.module
        else:
            return module


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str) -> None:
    """load_state_dict with an error for people: missing, unexpected and mismatched keys with shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f"{source}: the {what} weights do not fit the chosen model."]
        for title, items in (("mismatched shapes", mismatched), ("missing keys", missing),
                             ("unexpected keys", unexpected)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
        lines.append("  Pick the model the checkpoint was trained with (e.g. model=seed_vae for the seed's "
                     "VAE_epoch_100.pth) and the same data.image_size / data.channels.")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state)


def is_seed_state_dict(obj: Mapping) -> bool:
    return "fc_var.weight" in obj and "decoder_input.weight" in obj and "format_version" not in obj


def split_seed_state_dict(obj: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """The seed's VAE_v1 keys, split into facegen's encoder and decoder (names unchanged)."""
    enc = {k: v for k, v in obj.items() if k.startswith(SEED_ENCODER_PREFIXES)}
    dec = {k: v for k, v in obj.items() if k.startswith(SEED_DECODER_PREFIXES)}
    return enc, dec


def seed_model_config(obj: Mapping[str, torch.Tensor]) -> dict:
    """A model config (as conf/model/seed_vae.yaml gives it) that fits a seed state dict."""
    latent_dim, flat = obj["fc_mu.weight"].shape
    channels = int(obj["encoder.0.0.weight"].shape[1])
    hidden = [int(obj[f"encoder.{i}.0.weight"].shape[0]) for i in range(len(
        {k.split(".")[1] for k in obj if k.startswith("encoder.")}))]
    side = int(round((flat / hidden[-1]) ** 0.5)) * 2 ** len(hidden)
    common = {"latent_dim": int(latent_dim), "channels": channels, "image_size": side}
    return {
        "latent_dim": int(latent_dim),
        "encoder": {"_target_": "facegen.models.encoders.SeedEncoder", **common, "hidden_dims": hidden},
        "decoder": {"_target_": "facegen.models.decoders.SeedDecoder", **common,
                    "hidden_dims": [int(obj[f"decoder.{i}.0.weight"].shape[1]) for i in range(len(hidden))]},
        "discriminator": None,
    }


def model_from_checkpoint(obj: Mapping, model_cfg: Any = None, source: str = "checkpoint",
                          use_ema: bool = True, with_discriminator: bool = False) -> VAEGAN:
    """Build the model a checkpoint describes (or `model_cfg`) and load its weights."""
    from omegaconf import OmegaConf

    if is_seed_state_dict(obj):
        cfg = OmegaConf.create(seed_model_config(obj)) if model_cfg is None else model_cfg
        model = build_model(cfg, with_discriminator=False)
        enc, dec = split_seed_state_dict(obj)
        load_state(model.encoder, enc, "encoder", source)
        load_state(model.decoder, dec, "decoder", source)
        return model
    if "format_version" not in obj or "model" not in obj:
        raise CheckpointError(f"{source}: neither a facegen checkpoint nor the seed project's VAE_v1 "
                              f"state dict (keys: {', '.join(list(obj)[:8])} ...)")
    if model_cfg is None:
        model_cfg = OmegaConf.create(obj["config"]["model"])
    weights = obj["model"]
    with_dis = with_discriminator and weights.get("discriminator") is not None
    model = build_model(model_cfg, with_discriminator=with_dis)
    load_state(model.encoder, weights["encoder"], "encoder", source)
    decoder_state = weights.get("decoder_ema") if use_ema and weights.get("decoder_ema") else weights["decoder"]
    load_state(model.decoder, decoder_state, "decoder", source)
    if with_dis:
        load_state(model.discriminator, weights["discriminator"], "discriminator", source)
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", model_cfg: Any = None,
               use_ema: bool = True) -> VAEGAN:
    """Any facegen checkpoint, or the seed's raw state dict, as a VAEGAN in eval mode on `device`.

    The model comes from the checkpoint's own config; `model_cfg` is needed only to override it.
    The decoder's EMA copy is used when the checkpoint has one (use_ema=False for the raw one).
    """
    obj = read_checkpoint(path)
    model = model_from_checkpoint(obj, model_cfg, source=str(path), use_ema=use_ema)
    return model.to(device).eval()


def find_latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    last = Path(run_dir) / "checkpoints" / "last.pt"
    return last if last.is_file() else None
