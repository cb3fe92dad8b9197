"""Split an evaluation over the ranks of a process group and put the pieces back together.

Item i of N goes to rank i mod world_size, so the shares differ by at most one item and every rank
works. Each rank computes rows (features, per-image scores) for its items; `gather_rows` returns
the full N-row tensor, in item order, on every rank. Every rank then computes the same scalars
itself: no rank sits in a collective while another one works alone.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(count: int, rank: int | None = None, world: int | None = None) -> list[int]:
    """The item indices of `rank` among `count` items: rank, rank + world, rank + 2·world, …"""
    default_rank, default_world = rank_and_world()
    rank = default_rank if rank is None else rank
    world = default_world if world is None else world
    return list(range(rank, count, world))


def gather_rows(local: torch.Tensor, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """This rank's rows (in `shard(count)` order) -> all `count` rows in item order, on every rank (CPU).

    `device` is where the collective runs: the accelerator under NCCL, the CPU under gloo.
    """
    rank, world = rank_and_world()
    if world == 1:
        return local.cpu()
    per_rank = -(-count // world)  # all_gather needs equal shapes: pad every share to the largest
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    # pieces[r][j] is item r + j·world: interleave the shares back into item order.
    stacked = torch.stack(pieces, dim=1).flatten(0, 1)  # per_rank·world rows, row j·world + r = item
    return stacked[:count].cpu()


def gather_objects(local: object) -> list[object]:
    """Every rank's `local` (small picklable data: a few grid images, counters), in rank order."""
    _, world = rank_and_world()
    if world == 1:
        return [local]
    out: list[object] = [None] * world
    dist.all_gather_object(out, local)
    return out


def gather_selected(mine: list[int], local: torch.Tensor, wanted: set[int] | range) -> list[torch.Tensor]:
    """The rows of items in `wanted` (this rank holds rows `local[k]` of items `mine[k]`), from every rank,
    in item order, on every rank. For a few rows (grid images); use `gather_rows` for whole sets."""
    pieces = gather_objects([(i, local[k]) for k, i in enumerate(mine) if i in wanted])
    rows = dict(item for piece in pieces for item in piece)
    return [rows[i] for i in sorted(rows)]
