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

    return (DataError, CheckpointError, FeatureNetError, TrainingError, LaunchError, LoggerError)


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
    from omegaconf.errors import MissingMandatoryValue

    try:
        return fn(*args, **kwargs)
    except (*user_errors(), MissingMandatoryValue) as e:
        if isinstance(e, MissingMandatoryValue):   # a ??? in a config: a key the user must give
            key = e.full_key or "a key"
            message = f"{key} has no value (??? in its config): give it on the command line, e.g. {key}=..."
        else:
            message = str(e)
        print(f"error: {message}", file=sys.stderr, flush=True)
        if _in_multirun():
            raise
        raise SystemExit(2) from None
