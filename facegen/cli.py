"""What every entry point shares: errors for people instead of tracebacks."""
from __future__ import annotations

import sys
from typing import Any, Callable



def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story: printed alone, exit code 2."""
    from facegen.checkpoint import CheckpointError
    from facegen.data.base import DataError
    from facegen.distributed import LaunchError
    from facegen.logging import LoggerError
    from facegen.metrics.features import FeatureNetError
    from facegen.trainer import TrainingError
    from facegen.utils import ConfigError

    return (DataError, CheckpointError, FeatureNetError, TrainingError, LaunchError, LoggerError, ConfigError)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_or_explain(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an entry point; a user error prints one line and exits 2.

    In a multirun the error is re-raised after the message instead: Hydra then marks that job
    failed and goes on with the others (and Optuna marks the trial failed), so one bad job
    never loses the rest of a sweep.
    """
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    try:
        return fn(*args, **kwargs)
    except (*user_errors(), MissingMandatoryValue, InstantiationException) as e:
        if isinstance(e, InstantiationException):
            # a network's, loss's or data source's constructor refused its config (e.g. DCGANEncoder:
            # image_size 50 is not divisible by 8): its message is for the user; anything else is a bug
            if not isinstance(e.__cause__, ValueError):
                raise
            where = next((s.split(":", 1)[1].strip() for s in str(e).splitlines() if s.startswith("full_key:")), "")
            message = f"{e.__cause__}" + (f" ({where})" if where else "")
        elif isinstance(e, MissingMandatoryValue):   # a ??? in a config: a key the user must give
            key = e.full_key or "a key"
            message = f"{key} has no value (??? in its config): give it on the command line, e.g. {key}=..."
        else:
            message = str(e)
        print(f"error: {message}", file=sys.stderr, flush=True)
        if _in_multirun():
            raise
        raise SystemExit(2) from None
