"""Run under torchrun by tests/test_train_cli.py. After a few hybrid steps, every rank must hold the same student
weights, with one backward per crop resolution (the first under DDP's no_sync) and with one joint backward, and
the two modes must give the same weights; and a precision each rank would time differently is rank 0's on every
rank. Prints 'ranks in sync'."""

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinotwins.training import precision  # noqa: E402
from dinotwins.training.trainer import Trainer  # noqa: E402
from tests.conftest import smoke_config  # noqa: E402


def trained_weights(out: Path, per_resolution: bool, steps: int) -> torch.Tensor:
    cfg = smoke_config("hybrid", batch_size=8, seed=5, precision="fp32", backward_per_resolution=per_resolution)
    trainer = Trainer(cfg, out, progress=False)
    for step in range(steps):
        trainer.train_step(trainer.batch(step), step)
    return torch.cat([p.detach().flatten() for p in trainer.objective.student.parameters()])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # as if the ranks' timings disagreed: bf16 7x faster than fp32 on rank 0, 30x slower on rank 1
        precision.cpu_has_native_bf16 = lambda: True
        precision.bf16_matmul_speedup = lambda *args, **kwargs: 7.0 if os.environ["RANK"] == "0" else 1 / 30
        auto = Trainer(smoke_config("dino", batch_size=8, precision="auto"), Path(tmp) / "auto", progress=False)
        assert auto.autocast_dtype is torch.bfloat16, f"rank {os.environ['RANK']} computes in {auto.autocast_dtype}"
        del auto
        initial = trained_weights(Path(tmp) / "initial", True, 0)
        split = trained_weights(Path(tmp) / "split", True, 3)
        joint = trained_weights(Path(tmp) / "joint", False, 3)
        assert (split - initial).abs().max().item() > 0, "the weights did not change"
        torch.testing.assert_close(split, joint, rtol=1e-4, atol=1e-6)
        gathered = [torch.empty_like(split) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, split)
        for other in gathered[1:]:
            torch.testing.assert_close(other, gathered[0], rtol=0, atol=0)
        if dist.get_rank() == 0:
            print("ranks in sync")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
