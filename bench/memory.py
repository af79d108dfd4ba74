"""The memory a block of work takes at its peak, as the run's rows record it (`peak_memory_bytes`).

On CUDA the allocator's own peak (`torch.cuda.max_memory_allocated`); on a CPU the peak of the malloc heap in
use above its level at the start, sampled by a thread (`HeapPeak`).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

__all__ = ["HeapPeak", "PeakMemory"]


def _peak_rss_bytes() -> int:
    import resource

    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


@functools.cache
def _heap_reader():
    """A function giving the bytes glibc's malloc has handed out and not taken back (mallinfo2: uordblks +
    hblkhd), or None where glibc ≥ 2.33 is not there."""
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        _fields_ = [(name, ctypes.c_size_t) for name in (*names, "keepcost")]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


class HeapPeak:
    """The peak of the heap in use above its level at the start, sampled every `interval` seconds by a thread
    while the block runs: this block's own CPU memory, tensors included (torch's CPU allocator takes its memory
    from malloc). The process' maximum RSS (ru_maxrss) only grows and freed memory stays resident, so a warm
    process read 0 from it; where mallinfo2 is missing, that growth is the fallback (a lower bound)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> HeapPeak:
        import threading

        self._in_use = _heap_reader()
        self.start_max = _peak_rss_bytes()
        self.start = self._in_use() if self._in_use else 0
        self.highest = self.start
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True) if self._in_use else None
        if self.thread is not None:
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(self.interval):
            self.highest = max(self.highest, self._in_use())

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread is None:
            self.peak = max(0, _peak_rss_bytes() - self.start_max)
            return
        self.thread.join()
        self.peak = max(0, max(self.highest, self._in_use()) - self.start)


def synchronize(device: Any) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timer around it is honest.

    device: a torch.device, or a tensor (its device)."""
    device = getattr(device, "device", device)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


class PeakMemory:
    """The peak memory of the block on `device`, in `self.peak` (bytes) after it: CUDA's allocator peak since
    the block began, or on a CPU `HeapPeak`'s."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.peak = 0
        self._heap: HeapPeak | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._heap = HeapPeak().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._heap is None:
            import torch

            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._heap.__exit__(*exc)
        self.peak = self._heap.peak
