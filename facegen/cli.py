"""What every entry point shares: errors for people instead of tracebacks."""
from __future__ import annotations

import sys
from typing import Any, Callable



def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story: printed alone, exit code 2."""
    from facegen.checkpoint import CheckpointError
    from facegen.data.base import DataError
    from facegen.trainer import TrainingError

    return (DataError, CheckpointError, TrainingError)


def run_or_explain(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
