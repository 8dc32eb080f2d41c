"""Run under torchrun by tests/test_train_cli.py: after a few hybrid steps with one backward per crop resolution
(the first under DDP's no_sync), every rank must hold the same student weights. Prints 'ranks in sync'."""

import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinotwins.trainer import Trainer  # noqa: E402
from tests.conftest import smoke_config  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(smoke_config("hybrid", batch_size=8, seed=5), Path(tmp) / "run", progress=False)
        for step in range(3):
            trainer.train_step(trainer.batch(step), step)
        weights = torch.cat([p.detach().flatten() for p in trainer.ssl.student.parameters()])
        gathered = [torch.empty_like(weights) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, weights)
        moved = (weights - torch.cat([p.flatten() for p in Trainer(
            smoke_config("hybrid", batch_size=8, seed=5), Path(tmp) / "fresh", progress=False).ssl.student
            .parameters()])).abs().max().item()
        assert moved > 0, "the weights did not change"
        for other in gathered[1:]:
            torch.testing.assert_close(other, gathered[0], rtol=0, atol=0)
        if dist.get_rank() == 0:
            print("ranks in sync")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
