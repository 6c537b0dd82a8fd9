"""Benchmark: rank 10,000 synthetic offers for one workload; prints the median time and writes JSON.

    python bench/bench_rank.py [--offers 10000] [--runs 15] [--limit 20] [--out bench/results/rank.json]

The offers mimic a marketplace listing: ~30 GPU models in the providers' spellings, prices, bandwidths and
reliabilities drawn from a fixed-seed generator, a tenth of them spot, some unverified or too small.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpurun.models import GpuRequest, GpuSpec, Offer, Workload
from gpurun.pricing import rank

GPUS = [
    ("RTX 3060", 12, 0.06),
    ("RTX 3070", 8, 0.07),
    ("RTX 3080", 10, 0.09),
    ("RTX 3090", 24, 0.18),
    ("RTX 3090 Ti", 24, 0.22),
    ("RTX 4060 Ti", 16, 0.10),
    ("RTX 4070", 12, 0.12),
    ("RTX 4070 Ti", 12, 0.14),
    ("RTX 4080", 16, 0.20),
    ("RTX 4090", 24, 0.35),
    ("NVIDIA GeForce RTX 4090", 24, 0.44),
    ("RTX 5080", 16, 0.30),
    ("RTX 5090", 32, 0.65),
    ("RTX A4000", 16, 0.15),
    ("RTX A5000", 24, 0.22),
    ("RTX A6000", 48, 0.45),
    ("NVIDIA RTX A6000", 48, 0.49),
    ("RTX 6000Ada", 48, 0.75),
    ("NVIDIA RTX 6000 Ada Generation", 48, 0.77),
    ("L4", 24, 0.30),
    ("L40S", 48, 0.85),
    ("A40", 48, 0.40),
    ("A100 PCIE", 40, 0.80),
    ("A100 SXM4", 80, 1.10),
    ("NVIDIA A100-SXM4-80GB", 80, 1.19),
    ("H100 PCIE", 80, 1.90),
    ("H100 SXM", 80, 2.20),
    ("NVIDIA H100 80GB HBM3", 80, 2.69),
    ("H200", 141, 3.20),
    ("Tesla V100", 16, 0.20),
    ("Mystery GPU 9000", 24, 0.30),
]


def synthetic_offers(count: int, seed: int = 7) -> list[Offer]:
    rng = random.Random(seed)
    offers = []
    for i in range(count):
        name, vram, base = rng.choice(GPUS)
        gpus = rng.choice((1, 1, 1, 1, 2, 4, 8))
        spot = rng.random() < 0.1
        offers.append(
            Offer(
                provider=rng.choice(("vast", "vast", "vast", "runpod")),
                offer_id=str(1_000_000 + i),
                gpu=GpuSpec(name, gpus, vram, tflops=rng.choice((None, 40.0, 82.6))),
                price_per_hour=round(base * gpus * rng.uniform(0.7, 1.6) * (0.5 if spot else 1.0), 4),
                spot=spot,
                reliability=rng.uniform(0.85, 0.999),
                location=rng.choice(("Ontario, CA", "Texas, US", "Bavaria, DE", "Tokyo, JP")),
                inet_down_mbps=rng.choice((None, rng.uniform(20, 5000))),
                inet_up_mbps=rng.uniform(20, 5000),
                disk_gb=rng.choice((None, 20.0, 40.0, 100.0)),
                storage_per_gb_month=rng.choice((0.0, 0.1, 0.15)),
                download_per_gb=rng.choice((0.0, 0.0, 0.002, 0.02)),
                upload_per_gb=rng.choice((0.0, 0.0, 0.002, 0.02)),
                verified=rng.random() > 0.05,
            )
        )
    return offers


def _reference_us() -> float:
    """This machine's speed in one number: µs for sum(range(1000)), best of 5 (compare runs across machines)."""
    import timeit

    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--limit", type=int, default=20, help="estimates materialised (the CLI's default is 20)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rank.json")
    args = parser.parse_args(argv)
    offers = synthetic_offers(args.offers)
    workload = Workload(family="sd15", images=50, repeats=10, epochs=10, dataset_bytes=100_000_000)
    requirements = GpuRequest(min_vram_gb=8)
    results = {}
    reference = _reference_us()
    print(f"machine reference: `python -m timeit 'sum(range(1000))'` ≈ {reference:.1f} µs (a 2023 laptop: ~8)")
    for label, limit in (("limit", args.limit), ("all", None)):
        times, cpu = [], []
        for _ in range(args.runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            ranking = rank(workload, offers, budget=1.0, requirements=requirements, limit=limit)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        results[label] = {
            "limit": limit,
            "median_ms": round(statistics.median(times) * 1000, 2),
            "median_cpu_ms": round(statistics.median(cpu) * 1000, 2),
            "min_ms": round(min(times) * 1000, 2),
            "max_ms": round(max(times) * 1000, 2),
            "eligible": ranking.eligible,
            "rejected": len(ranking.rejected),
            "returned": len(ranking.estimates),
        }
        row = results[label]
        print(
            f"rank {args.offers} offers ({label}: {len(ranking.estimates)} estimates returned): "
            f"median {row['median_ms']} ms wall, {row['median_cpu_ms']} ms CPU over {args.runs} runs "
            f"(min {row['min_ms']}, max {row['max_ms']})"
        )
    document = {
        "benchmark": "rank",
        "offers": args.offers,
        "runs": args.runs,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "reference_sum_range_1000_us": round(reference, 2),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
