"""estimate(): phase arithmetic against hand-computed values, units, storage and bandwidth, reliability, spot,
feasibility, unknown GPUs, calibration, and monotonicity over many random offers."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from gpurun.models import GpuSpec, Offer, Workload
from gpurun.pricing import PHASES, TIME_PHASES, Assumptions, BootProfile, estimate
from gpurun.pricing.throughput import table_efficiency
from gpurun.provision.local import LocalProvider

# Round numbers so every phase can be worked out by hand: advertised bandwidth reached in full, no caps.
SIMPLE = Assumptions(
    boot={"vast": BootProfile(60.0)},
    image_bytes=2e9,
    image_unpack_seconds=40.0,
    image_disk_gb=8.0,
    env_bytes=100e6,
    env_seconds=50.0,
    env_disk_gb=1.0,
    registry_mbps=1e6,
    hub_mbps=1e6,
    pypi_mbps=1e6,
    bandwidth_efficiency=1.0,
    user_uplink_mbps=20.0,
    user_downlink_mbps=100.0,
    transfer_setup_seconds=5.0,
    model_load_seconds=30.0,
    disk_read_mbs=1000.0,
    sample_images=10,
    sample_steps=20,
    checkpoint_every_epochs=2,
    teardown_seconds=15.0,
    disk_slack_gb=5.0,
)
JOB = Workload(
    family="sd15",
    resolution=512,
    images=20,
    repeats=10,
    epochs=10,
    dataset_bytes=20_000_000,
    base_model_bytes=4_000_000_000,
    network_dim=32,
)


def offer(**overrides) -> Offer:
    fields = dict(
        provider="vast",
        offer_id="1",
        gpu=GpuSpec("RTX 4090", 1, 24.0),
        price_per_hour=0.36,
        reliability=0.9,
        inet_down_mbps=800.0,
        inet_up_mbps=400.0,
    )
    fields.update(overrides)
    return Offer(**fields)


def phase(est, name: str):
    return next(p for p in est.phases if p.name == name)


def test_phases_by_hand() -> None:
    est = estimate(JOB, offer(), assumptions=SIMPLE)
    assert [p.name for p in est.phases] == list(PHASES)
    # boot: 60 s start + 40 s unpack + 2 GB image at 800 Mbit/s (16 000 Mbit / 800 = 20 s)
    assert phase(est, "boot").seconds == pytest.approx(120.0)
    # install: 50 s + 100 MB (800 Mbit) at 800 Mbit/s
    assert phase(est, "install").seconds == pytest.approx(51.0)
    # model: 4 GB = 32 000 Mbit at 800 Mbit/s
    assert phase(est, "model").seconds == pytest.approx(40.0)
    # upload: 5 s + 20 MB = 160 Mbit over the user's 20 Mbit/s uplink (slower than the host's 800)
    assert phase(est, "upload").seconds == pytest.approx(13.0)
    # training: 20 × 10 × 10 = 2000 samples; batch 4 on a 24 GB card; 1.78 TFLOP UNet + 3 × 0.013 TE per sample
    sps = 165.2 * table_efficiency("consumer", 4) / (1.78 + 3 * 0.013)
    assert est.batch_size == 4
    assert phase(est, "training").seconds == pytest.approx(2000 / sps)
    # caching: 30 s start + 4 GB read at 1000 MB/s + 20 VAE encodes (1.12 TFLOP) at the batch-2 efficiency
    vae = 20 * 1.12e12 / (165.2e12 * table_efficiency("consumer", 2))
    assert phase(est, "caching").seconds == pytest.approx(34.0 + vae)
    # fetch: 5 s + the LoRA (37.7 MB) and a 10-image grid (10 × 512² × 3 / 2) over the user's 100 Mbit/s + 15 s
    fetch_bytes = 37.7e6 + 10 * 512 * 512 * 3 * 0.5
    assert phase(est, "fetch").seconds == pytest.approx(20.0 + fetch_bytes * 8 / 100e6)
    # every time phase is billed at $/h; the totals are the sums
    for p in est.phases[: len(TIME_PHASES)]:
        assert p.dollars == pytest.approx(0.36 * p.seconds / 3600)
    assert est.seconds == pytest.approx(sum(p.seconds for p in est.phases))
    assert est.dollars == pytest.approx(sum(p.dollars for p in est.phases))
    assert est.expected_dollars == pytest.approx(est.dollars / 0.9)
    assert est.feasible and est.reasons == ()


def test_bandwidth_is_in_megabits() -> None:
    # 1 GB at 80 Mbit/s is 100 s, not 12.5 s (megabytes) — Vast's inet_down is Mbit/s
    job = dataclasses.replace(JOB, base_model_bytes=1_000_000_000)
    slow = estimate(job, offer(inet_down_mbps=80.0), assumptions=SIMPLE)
    fast = estimate(job, offer(inet_down_mbps=160.0), assumptions=SIMPLE)
    assert phase(slow, "model").seconds == pytest.approx(100.0)
    assert phase(fast, "model").seconds == pytest.approx(50.0)


def test_advertised_bandwidth_is_derated_and_capped() -> None:
    derated = dataclasses.replace(SIMPLE, bandwidth_efficiency=0.5, hub_mbps=300.0)
    # 800 Mbit/s advertised × 0.5 = 400, then the hub's 300 cap: 32 000 Mbit / 300
    assert phase(estimate(JOB, offer(), assumptions=derated), "model").seconds == pytest.approx(32000 / 300)
    # a host that states no bandwidth gets the assumed figure, and the note says so
    unknown = estimate(JOB, offer(inet_down_mbps=None), assumptions=SIMPLE)
    assert phase(unknown, "model").seconds == pytest.approx(32000 / SIMPLE.unknown_bandwidth_mbps)
    assert "assumed" in phase(unknown, "model").note


def test_storage_is_billed_only_beyond_the_included_disk() -> None:
    base = estimate(JOB, offer(disk_gb=1000.0, storage_per_gb_month=0.15), assumptions=SIMPLE)
    assert phase(base, "storage").dollars == 0.0  # Vast: dph_total already holds the allocated disk
    hours = base.seconds / 3600
    small = estimate(JOB, offer(disk_gb=10.0, storage_per_gb_month=0.15), assumptions=SIMPLE)
    smaller = estimate(JOB, offer(disk_gb=4.0, storage_per_gb_month=0.15), assumptions=SIMPLE)
    # 6 GB more to buy, for the whole time the machine exists, at $0.15 per GB-month of 720 h
    extra = phase(smaller, "storage").dollars - phase(small, "storage").dollars
    assert extra == pytest.approx(6 * 0.15 * hours / 720)
    # RunPod-style: no disk in the price (None) → all of it billed at the monthly rate
    runpod = estimate(JOB, offer(disk_gb=None, storage_per_gb_month=0.10), assumptions=SIMPLE)
    assert phase(runpod, "storage").dollars > 0
    assert runpod.dollars == pytest.approx(sum(p.dollars for p in runpod.phases))


def test_disk_too_small_is_infeasible() -> None:
    est = estimate(JOB, offer(disk_gb=10.0, storage_per_gb_month=0.0), assumptions=SIMPLE)
    assert not est.feasible
    assert any("disk" in reason for reason in est.reasons)


def test_bandwidth_charges_each_way() -> None:
    est = estimate(JOB, offer(download_per_gb=0.01, upload_per_gb=0.0), assumptions=SIMPLE)
    # into the machine: image 2 GB + wheels 0.1 GB + model 4 GB + dataset 0.02 GB
    assert phase(est, "bandwidth").dollars == pytest.approx(6.12 * 0.01)
    out = estimate(JOB, offer(download_per_gb=0.0, upload_per_gb=0.01), assumptions=SIMPLE)
    # out of it: the final LoRA + grid, and 5 checkpoints (epochs 10 / every 2) of LoRA + optimizer state (4×)
    out_bytes = 37.7e6 + 10 * 512 * 512 * 3 * 0.5 + 5 * 37.7e6 * 4
    assert phase(out, "bandwidth").dollars == pytest.approx(out_bytes / 1e9 * 0.01)


def test_reliability_prices_failures_in() -> None:
    sure = estimate(JOB, offer(reliability=1.0), assumptions=SIMPLE)
    assert sure.expected_dollars == pytest.approx(sure.dollars)
    flaky = estimate(JOB, offer(reliability=0.5), assumptions=SIMPLE)
    assert flaky.expected_dollars == pytest.approx(2 * flaky.dollars)
    broken = estimate(JOB, offer(reliability=0.0), assumptions=SIMPLE)  # new hosts report 0: floored, finite
    assert math.isfinite(broken.expected_dollars) and broken.expected_dollars == pytest.approx(broken.dollars / 0.05)
    assert estimate(JOB, offer(reliability=float("nan")), assumptions=SIMPLE).expected_dollars == pytest.approx(
        sure.dollars
    )


def test_spot_prices_in_the_expected_interruptions_each_resumed_on_a_new_machine() -> None:
    """Expected interruptions = hours / mean hours between them; each costs the phases before training again
    (boot, install, model, upload, model load and caching) and half a checkpoint interval of training."""
    spot = estimate(JOB, offer(spot=True, reliability=1.0, price_per_hour=0.18), assumptions=SIMPLE)
    seconds = {p.name: p.seconds for p in spot.phases}
    redo = sum(seconds[n] for n in ("boot", "install", "model", "upload", "caching"))
    redo += seconds["training"] * (SIMPLE.checkpoint_every_epochs / JOB.epochs) / 2
    interruptions = spot.seconds / 3600 / SIMPLE.spot_mean_hours_to_interruption
    assert spot.expected_dollars == pytest.approx(spot.dollars + interruptions * redo / 3600 * 0.18)
    assert spot.expected_dollars > spot.dollars
    on_demand = estimate(JOB, offer(reliability=1.0, price_per_hour=0.36), assumptions=SIMPLE)
    assert on_demand.expected_dollars == pytest.approx(on_demand.dollars)
    assert spot.expected_dollars < on_demand.expected_dollars  # half price wins a short job
    # a 200-hour job is interrupted ~26 times, yet with resume it does not "lose everything" (the old model's
    # e^(200/8) times the price): it pays the redone work, and at half the price a long spot run can still lose
    long_job = dataclasses.replace(JOB, images=1000, repeats=50, epochs=20, family="sdxl", resolution=1024)
    long_spot = estimate(long_job, offer(spot=True, reliability=1.0, price_per_hour=0.18), assumptions=SIMPLE)
    long_demand = estimate(long_job, offer(reliability=1.0), assumptions=SIMPLE)
    assert long_spot.seconds > 200 * 3600
    assert long_spot.dollars < long_demand.dollars < long_spot.expected_dollars < 3 * long_spot.dollars
    # rarer checkpoints lose more per interruption
    sparse = dataclasses.replace(SIMPLE, checkpoint_every_epochs=10)
    assert estimate(long_job, offer(spot=True, reliability=1.0, price_per_hour=0.18), assumptions=sparse
                    ).expected_dollars > long_spot.expected_dollars  # fmt: skip
    # the interruption's own bandwidth (the model and dataset come down again) is priced where it is billed
    paid = estimate(JOB, offer(spot=True, reliability=1.0, price_per_hour=0.18, download_per_gb=0.01),
                    assumptions=SIMPLE)  # fmt: skip
    ingress_bytes = 2e9 + 100e6 + JOB.base_model_bytes + JOB.dataset_bytes
    assert paid.expected_dollars - paid.dollars == pytest.approx(
        spot.expected_dollars - spot.dollars + interruptions * ingress_bytes * 0.01 / 1e9, rel=1e-6
    )


def test_vram_infeasible_offer_is_marked_with_reasons() -> None:
    sdxl = dataclasses.replace(JOB, family="sdxl", resolution=1024)
    est = estimate(sdxl, offer(gpu=GpuSpec("RTX 3070", 1, 8.0)), assumptions=SIMPLE)
    assert not est.feasible
    assert any("VRAM" in r and "8 GB" in r for r in est.reasons)
    assert math.isfinite(est.seconds) and math.isfinite(est.expected_dollars)  # still priced, for --explain


def test_small_card_gets_gradient_checkpointing_and_says_so() -> None:
    sdxl = dataclasses.replace(JOB, family="sdxl", resolution=1024)
    est = estimate(sdxl, offer(gpu=GpuSpec("RTX 4080", 1, 16.0)), assumptions=SIMPLE)
    assert est.feasible and est.batch_size == 2
    assert "gradient checkpointing" in phase(est, "training").note


def test_non_cuda_gpu_is_infeasible() -> None:
    est = estimate(JOB, offer(gpu=GpuSpec("AMD Instinct MI300X OAM", 1, 192.0)), assumptions=SIMPLE)
    assert not est.feasible and any("CUDA" in r for r in est.reasons)


def test_unknown_gpu_falls_back_to_the_offers_figure_then_a_default() -> None:
    advertised = estimate(JOB, offer(gpu=GpuSpec("Mystery GPU 9000", 1, 24.0, tflops=50.0)), assumptions=SIMPLE)
    sps = 50.0 * table_efficiency("consumer", 4) / (1.78 + 3 * 0.013)
    assert phase(advertised, "training").seconds == pytest.approx(2000 / sps)
    assert "unknown GPU" in phase(advertised, "training").note and "50 TFLOP/s" in phase(advertised, "training").note
    nothing = estimate(JOB, offer(gpu=GpuSpec("Mystery GPU 9000", 1, 24.0)), assumptions=SIMPLE)
    assert "conservative" in phase(nothing, "training").note
    assert phase(nothing, "training").seconds == pytest.approx(2000 * 50.0 / SIMPLE.default_tflops / sps)
    # a known GPU ignores the offer's figure (Vast's total_flops is FP32, not the tensor peak)
    known = estimate(JOB, offer(gpu=GpuSpec("RTX 4090", 1, 24.0, tflops=82.6)), assumptions=SIMPLE)
    assert phase(known, "training").seconds == pytest.approx(
        phase(estimate(JOB, offer(), assumptions=SIMPLE), "training").seconds
    )


def test_unknown_gpu_without_memory_is_infeasible() -> None:
    est = estimate(JOB, offer(gpu=GpuSpec("Mystery GPU 9000", 1, 0.0)), assumptions=SIMPLE)
    assert not est.feasible and "GPU memory unknown" in est.reasons


def test_calibration_and_efficiency_settings_change_the_training_time() -> None:
    key = "NVIDIA GeForce RTX 4090|sd15|512|4"
    measured = estimate(JOB, offer(), assumptions=SIMPLE, calibration={key: 10.0})
    assert phase(measured, "training").seconds == pytest.approx(2000 / 10.0)
    assert "measured" in phase(measured, "training").note
    tuned = estimate(JOB, offer(), assumptions=dataclasses.replace(SIMPLE, efficiency={"RTX 4090": 0.5}))
    assert phase(tuned, "training").seconds == pytest.approx(2000 * (1.78 + 3 * 0.013) / (165.2 * 0.5))


def test_multi_gpu_offer_trains_on_one_gpu_and_says_so() -> None:
    one = estimate(JOB, offer(), assumptions=SIMPLE)
    two = estimate(JOB, offer(gpu=GpuSpec("RTX 4090", 2, 24.0), price_per_hour=0.72), assumptions=SIMPLE)
    assert phase(two, "training").seconds == pytest.approx(phase(one, "training").seconds)
    assert "1 of the 2 GPUs" in phase(two, "training").note
    assert two.dollars > one.dollars


def test_local_machine_has_no_boot_image_or_install() -> None:
    local = Assumptions(boot={"local": LocalProvider.boot_profile})
    est = estimate(JOB, offer(provider="local", price_per_hour=0.0, reliability=1.0), assumptions=local)
    assert phase(est, "boot").seconds == 0 and phase(est, "install").seconds == 0
    assert est.dollars == 0.0 and est.expected_dollars == 0.0


def test_bad_workloads_are_named() -> None:
    with pytest.raises(ValueError, match="images"):
        estimate(dataclasses.replace(JOB, images=0), offer())
    with pytest.raises(ValueError, match="family"):
        estimate(dataclasses.replace(JOB, family="sd3"), offer())  # type: ignore[arg-type]


# ---- monotonicity, over many random offers and workloads -----------------------------------------------------


def _random_offer(rng: random.Random) -> Offer:
    name, vram = rng.choice(
        [("RTX 3090", 24.0), ("RTX 4090", 24.0), ("A100 SXM4", 80.0), ("L40S", 48.0), ("Mystery", 24.0)]
    )
    return offer(
        provider=rng.choice(["vast", "runpod", "elsewhere"]),
        gpu=GpuSpec(name, rng.choice([1, 2]), vram, tflops=rng.choice([None, 30.0, 90.0])),
        price_per_hour=rng.uniform(0.1, 3.0),
        reliability=rng.uniform(0.8, 1.0),
        spot=rng.random() < 0.2,
        inet_down_mbps=rng.choice([None, rng.uniform(10, 5000)]),
        inet_up_mbps=rng.choice([None, rng.uniform(10, 5000)]),
        disk_gb=rng.choice([None, 20.0, 200.0]),
        storage_per_gb_month=rng.choice([0.0, 0.1]),
        download_per_gb=rng.choice([0.0, 0.004]),
        upload_per_gb=rng.choice([0.0, 0.004]),
    )


def _random_workload(rng: random.Random) -> Workload:
    family = rng.choice(["sd15", "sd2", "sdxl"])
    return Workload(
        family=family,
        resolution={"sd15": 512, "sd2": 768, "sdxl": 1024}[family],
        images=rng.randint(5, 120),
        repeats=rng.randint(1, 20),
        epochs=rng.randint(1, 20),
        batch_size=rng.choice([None, 1, 2]),
        gradient_checkpointing=rng.random() < 0.3,
        train_text_encoder=rng.random() < 0.5,
        dataset_bytes=rng.randint(1, 500) * 1_000_000,
    )


def test_monotonicity_properties() -> None:
    rng = random.Random(20260)
    for _ in range(300):
        o, w = _random_offer(rng), _random_workload(rng)
        base = estimate(w, o)
        # more images (and their bytes) never make a job cheaper or faster
        more = dataclasses.replace(w, images=w.images + rng.randint(1, 50), dataset_bytes=w.dataset_bytes * 2)
        bigger = estimate(more, o)
        assert bigger.expected_dollars >= base.expected_dollars and bigger.seconds >= base.seconds
        # a faster GPU at the same price never costs more (same card, more TFLOP/s advertised, unknown name)
        slow = dataclasses.replace(o, gpu=GpuSpec("Mystery", o.gpu.count, o.gpu.vram_gb, tflops=40.0))
        fast = dataclasses.replace(o, gpu=GpuSpec("Mystery", o.gpu.count, o.gpu.vram_gb, tflops=80.0))
        assert estimate(w, fast).expected_dollars <= estimate(w, slow).expected_dollars
        # a higher price never makes it cheaper; a faster network never makes it slower
        dearer = dataclasses.replace(o, price_per_hour=o.price_per_hour * 1.5)
        assert estimate(w, dearer).expected_dollars >= base.expected_dollars
        if o.inet_down_mbps:
            quicker = dataclasses.replace(o, inet_down_mbps=o.inet_down_mbps * 2)
            assert estimate(w, quicker).seconds <= base.seconds
        # a more reliable host is never worse
        steadier = dataclasses.replace(o, reliability=min(1.0, o.reliability + 0.05))
        assert estimate(w, steadier).expected_dollars <= base.expected_dollars
        # the breakdown always adds up
        assert base.seconds == pytest.approx(sum(p.seconds for p in base.phases))
        assert base.dollars == pytest.approx(sum(p.dollars for p in base.phases))
