"""DDP on CPU with the gloo backend and two processes: identical weights on both ranks, and resume."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


def _torchrun(out, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(ROOT / "tests" / "ddp_worker.py"), str(out), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("loss.separate_batches=true", "trainer.standing_stats=2")])
def test_ddp_ranks_end_identical_and_resume_continues(tmp_path, extra):
    """extra: the decoder called twice in a step (two batches), and standing statistics at each save."""
    r0, r1 = _torchrun(tmp_path, "trainer.epochs=2", *extra)
    assert (r0["world_size"], r1["world_size"]) == (2, 2)
    for net in r0["weights"]:
        for k, v in r0["weights"][net].items():
            if "running_" in k or "num_batches" in k:
                continue  # BN statistics are per rank, by design
            assert torch.equal(v, r1["weights"][net][k]), f"{net}.{k} differs between ranks"
    # each rank saw half of each epoch: 72 train faces / 2 ranks / batch 16 -> 3 steps an epoch
    assert r0["step"] == 6
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["finished"]
    # a resumed DDP run continues from the checkpoint
    r0b, _ = _torchrun(tmp_path, "trainer.epochs=3", "trainer.resume=auto", *extra)
    assert r0b["step"] == 9
    moved = any(not torch.equal(r0b["weights"]["encoder"][k], r0["weights"]["encoder"][k])
                for k in r0["weights"]["encoder"] if "running_" not in k)
    assert moved
