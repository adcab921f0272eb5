"""Small run-level helpers: seeding, device and precision choice, provenance, run-dir files."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


class ConfigError(ValueError):
    """A setting that cannot work as given: the message names the key and what to use instead."""


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask sets it, and a file
    another thread creates meanwhile would get the wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
        return umask


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same folder, flush + fsync, then rename over `path`: a reader
    sees the old file or the whole new one, never half of it (checkpoints, the data cache, feature nets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes it 0600: give it the mode open() would (0644 under umask 022)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    return torch.device(device)


def resolve_precision(precision: str | int, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: auto = bf16-mixed on CUDA, full fp32 on CPU; None means no autocast."""
    precision = str(precision)
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision in ("32", "32-true", "fp32"):
        return None
    if precision in ("bf16-mixed", "bf16"):
        return torch.bfloat16
    raise ConfigError(f"trainer.precision must be auto, 32 or bf16-mixed, got {precision!r}")


def git_info(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit and dirty flag of the facegen checkout (None outside git)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}


def provenance() -> dict[str, Any]:
    """What made this run: code version, command line, library versions, machine."""
    from facegen import __version__

    return {
        **git_info(),
        "command": " ".join([os.path.basename(sys.executable), "-m", "facegen.train", *sys.argv[1:]])
        if sys.argv and sys.argv[0].endswith("train.py") else " ".join(sys.argv),
        "facegen_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def pip_freeze() -> str:
    """The installed distributions, as `pip freeze` lists them (without spawning pip)."""
    lines = sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                    if d.metadata["Name"]}, key=str.lower)
    return "\n".join(lines) + "\n"


def write_provenance(run_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "provenance.json").write_text(json.dumps(info, indent=2) + "\n")
    (run_dir / "pip_freeze.txt").write_text(pip_freeze())
