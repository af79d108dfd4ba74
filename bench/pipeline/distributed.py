"""The torchrun process group of a run: rank and world size from the environment, a barrier at the end.

Each rank's device (cuda:<LOCAL_RANK>, or the CPU) is chosen by `bench.pipeline.settings.resolve_device`, a pure
function of the environment, so that the mapping is tested without GPUs.
"""

from __future__ import annotations

import datetime
import os

__all__ = ["Distributed"]


class Distributed:
    """Rank and world size from torchrun's environment; a gloo group (for the final barrier) only when there are several."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.group = False
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                # The group only carries the final barrier, so gloo serves CPU and GPU runs alike; ranks may
                # finish hours apart (unsupported pairs cost nothing), hence the long timeout.
                dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
                self.group = True

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.group:
            import torch.distributed as dist

            dist.destroy_process_group()
