"""Run by torchrun in tests/test_distributed.py: trains a tiny config, then saves this rank's weights."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import compose_config, tiny_overrides  # noqa: E402

from facegen.trainer import Trainer  # noqa: E402

out = Path(sys.argv[1])
cfg = compose_config("train", tiny_overrides("trainer.strategy=ddp", *sys.argv[2:]), output_dir=out / "run")
trainer = Trainer(cfg)
trainer.fit()
weights = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in trainer.nets.items()}
torch.save({"rank": trainer.rank, "world_size": trainer.world_size, "step": trainer.step, "weights": weights},
           out / f"rank{trainer.rank}.pt")
trainer.close()
