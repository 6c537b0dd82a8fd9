"""Pure cost model: GPU throughput, per-phase time and dollars, and ranking by expected total cost. No I/O.

    estimate(workload, offer)            → CostEstimate (phases, feasibility, $ and expected $)
    rank(workload, offers, budget=...)   → Ranking (ordered estimates, over-budget marks, rejected offers)

Imports only `gpurun.models`; every figure the model assumes lives in `Assumptions` (overridable) and every
GPU figure in `gpus.py` (with sources).
"""

from gpurun.pricing.assumptions import DEFAULT, Assumptions, BootProfile
from gpurun.pricing.estimate import BASE_MODEL_BYTES, PHASES, TIME_PHASES, CostModel, estimate
from gpurun.pricing.gpus import GPUS, GpuInfo, gpu_matches, match_gpu
from gpurun.pricing.rank import SORT_MODES, Ranking, Rejected, SortMode, rank, requirement_reasons
from gpurun.pricing.throughput import Calibration, calibration_key

__all__ = [
    "BASE_MODEL_BYTES",
    "DEFAULT",
    "GPUS",
    "PHASES",
    "SORT_MODES",
    "TIME_PHASES",
    "Assumptions",
    "BootProfile",
    "Calibration",
    "CostModel",
    "GpuInfo",
    "Ranking",
    "Rejected",
    "SortMode",
    "calibration_key",
    "estimate",
    "gpu_matches",
    "match_gpu",
    "rank",
    "requirement_reasons",
]
