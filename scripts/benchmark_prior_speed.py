"""Forward time of a prior's network on this machine: batch 16 (default) at the prior's size.

    python scripts/benchmark_prior_speed.py --prior natural64 --batch 16 --repeats 10

Prints the median and the minimum over repeats (after one warm-up call), and the thread count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.priors import load_prior  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prior", default="natural64")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    prior = load_prior(args.prior)
    x = torch.randn(args.batch, *prior.image_shape)
    times = []
    with torch.no_grad():
        prior.eps(x, 500)
        for _ in range(args.repeats):
            start = time.perf_counter()
            prior.eps(x, 500)
            times.append(time.perf_counter() - start)
    print(
        f"{args.prior}: batch {args.batch} x {prior.image_shape}: median {statistics.median(times):.3f} s, "
        f"min {min(times):.3f} s ({torch.get_num_threads()} threads, torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
