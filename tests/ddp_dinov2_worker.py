"""Run under torchrun by tests/test_dinov2.py. Each rank holds its slice of one batch; KoLeo's nearest neighbours and
Sinkhorn-Knopp's sums must then be those of the whole batch in one process. Prints 'global batch'."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinotwins.objectives.dinov2 import koleo_loss, sinkhorn_knopp  # noqa: E402


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    features, logits = torch.randn(8 * world, 6, generator=g), torch.randn(8 * world, 5, generator=g)
    mine = slice(8 * rank, 8 * (rank + 1))

    loss = koleo_loss(features[mine], distributed=True).detach()
    dist.all_reduce(loss)  # equal slices: the mean of the ranks' means is the batch mean
    torch.testing.assert_close(loss / world, koleo_loss(features))

    targets = sinkhorn_knopp(logits[mine], 0.1, distributed=True)
    gathered = [torch.empty_like(targets) for _ in range(world)]
    dist.all_gather(gathered, targets)
    torch.testing.assert_close(torch.cat(gathered), sinkhorn_knopp(logits, 0.1))
    if rank == 0:
        print("KoLeo and Sinkhorn-Knopp see the global batch")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
