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


class LaunchError(RuntimeError):
    """trainer.strategy asks for what the launch did not provide: one line for the user, exit 2."""


def _in_submitit_job() -> bool:
    """A task of a job that submitit started: hydra/launcher=slurm, or submitit_local on this machine."""
    return os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local")


def _world_size_from_env() -> int:
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if _in_submitit_job():
        from submitit import JobEnvironment

        return JobEnvironment().num_tasks
    return 1


def _export_submitit_env() -> None:
    """A task of a job that submitit started (hydra/launcher=slurm or submitit_local): the cluster
    numbers the tasks (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the node list), torch's env://
    needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; submitit's own helper translates (the first
    node is the master, the port is drawn from the job id, so every task, and a requeued job, agrees)."""
    from submitit.helpers import TorchDistributedEnvironment

    # keep every GPU visible: device_for_rank picks cuda:LOCAL_RANK
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup(strategy: str, device: str) -> tuple[int, int]:
    """(rank, world_size); joins the process group when trainer.strategy=ddp under torchrun or in
    the tasks of a job that submitit started (hydra/launcher=slurm or submitit_local; auto: whenever
    there are several)."""
    if strategy in (None, "auto", "single") or strategy == "none":
        if strategy == "auto" and _world_size_from_env() > 1:
            strategy = "ddp"
        else:
            return 0, 1
    if strategy != "ddp":
        raise LaunchError(f"trainer.strategy must be auto, single or ddp, got {strategy!r}")
    if "RANK" not in os.environ and _in_submitit_job():
        _export_submitit_env()
    if "RANK" not in os.environ:
        raise LaunchError("trainer.strategy=ddp needs a launcher: torchrun --nproc_per_node=N -m facegen.train "
                           "trainer.strategy=ddp, or python -m facegen.train -m hydra/launcher=slurm "
                           "trainer.strategy=ddp hydra.launcher.tasks_per_node=N (one task per GPU)")
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
    # forward_sync_buffers=False: BN statistics are per-rank after the start (as in plain DDP training
    # of GANs); weights stay identical because gradients are all-reduced before every step. (The
    # deprecated broadcast_buffers=False warns; the init sync it skipped copies rank 0's buffers,
    # which every rank built, or loaded, identically anyway.)
    return {n: nn.parallel.DistributedDataParallel(m, device_ids=ids, forward_sync_buffers=False)
            for n, m in nets.items()}


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """t averaged over all ranks (t itself outside DDP): for decisions every rank must take alike,
    such as the equilibrium gate, which would otherwise rest the discriminator on one rank and train
    it on another (mismatched all-reduces: a hang, or ranks whose weights part)."""
    if not is_active():
        return t
    t = t.detach().clone()
    tdist.all_reduce(t)   # SUM: gloo has no AVG
    return t / tdist.get_world_size()


def barrier() -> None:
    if is_active():
        tdist.barrier()


def cleanup() -> None:
    if is_active():
        tdist.destroy_process_group()
