"""Multi-GPU / multi-node data parallelism on PyTorch's own engine (DDP, launched by torchrun).

Each of the three networks is wrapped in DistributedDataParallel; every rank trains on its own
slice of each epoch's shuffle, rank 0 alone writes checkpoints, logs and the run dir, and all
ranks use rank 0's run dir (each process would otherwise stamp its own time).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn


def setup(strategy: str, device: str) -> tuple[int, int]:
    """(rank, world_size); joins the process group when trainer.strategy=ddp under torchrun."""
    if strategy in (None, "auto", "single") or strategy == "none":
        if strategy == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            strategy = "ddp"
        else:
            return 0, 1
    if strategy != "ddp":
        raise ValueError(f"trainer.strategy must be auto, single or ddp, got {strategy!r}")
    if "RANK" not in os.environ:
        raise RuntimeError("trainer.strategy=ddp needs a launcher: torchrun --nproc_per_node=N -m facegen.train "
                           "trainer.strategy=ddp (or the SLURM launcher, which sets RANK/WORLD_SIZE)")
    if not tdist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return tdist.get_rank(), tdist.get_world_size()


def device_for_rank(device: torch.device, rank: int) -> torch.device:
    if device.type == "cuda" and is_active():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def is_active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def agree_on_run_dir(own: str) -> str:
    """Rank 0's run dir for every rank; a rank's own (empty) Hydra dir is removed."""
    if not is_active():
        return own
    box = [own]
    tdist.broadcast_object_list(box, src=0)
    chosen = box[0]
    if Path(own).resolve() != Path(chosen).resolve() and Path(own).is_dir():
        leftovers = {p.name for p in Path(own).iterdir()}
        if leftovers <= {".hydra", "train.log"}:
            shutil.rmtree(own, ignore_errors=True)
    return chosen


def wrap(nets: dict[str, nn.Module], device: torch.device) -> dict[str, nn.Module]:
    ids = [device.index] if device.type == "cuda" else None
    # broadcast_buffers=False: BN statistics are per-rank (as in plain DDP training of GANs);
    # weights stay identical because gradients are all-reduced before every step.
    return {n: nn.parallel.DistributedDataParallel(m, device_ids=ids, broadcast_buffers=False)
            for n, m in nets.items()}


def barrier() -> None:
    if is_active():
        tdist.barrier()


def cleanup() -> None:
    if is_active():
        tdist.destroy_process_group()
