"""The pricing model's facts: the GPU table and name matching, FLOPs per image, efficiency, calibration, VRAM."""

from __future__ import annotations

import ast

import pytest

from gpurun.pricing import GPUS, gpu_matches, match_gpu
from gpurun.pricing.throughput import (
    calibration_key,
    parse_calibration,
    table_efficiency,
    training_throughput,
    unet_train_tflop,
    vae_encode_tflop,
)
from gpurun.pricing.vram import choose_batch
from tests.support.env import REPO_ROOT

PRICING_DIR = REPO_ROOT / "gpurun" / "pricing"


def test_pricing_imports_only_models_and_the_standard_library() -> None:
    # DESIGN: `pricing` imports only `models` (no I/O, no providers, no settings)
    for path in PRICING_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.startswith("gpurun"):
                    assert name == "gpurun.models" or name.startswith("gpurun.pricing"), (path.name, name)
                else:
                    assert name.split(".")[0] in {
                        "__future__",
                        "math",
                        "re",
                        "dataclasses",
                        "functools",
                        "heapq",
                        "collections",
                        "typing",
                    }, (path.name, name)


def test_table_is_complete_and_sane() -> None:
    names = {info.name for info in GPUS}
    for wanted in (
        "RTX 3060",
        "RTX 3090 Ti",
        "RTX 4060 Ti",
        "RTX 4070 Ti",
        "RTX 5070 Ti",
        "RTX 5090",
        "RTX A4500",
        "RTX 4000Ada",
        "RTX 5000Ada",
        "RTX 6000Ada",
        "L4",
        "L40",
        "L40S",
        "A10",
        "A10G",
        "A40",
        "A100 PCIE",
        "A100 SXM4",
        "H100 PCIE",
        "H100 SXM",
        "H100 NVL",
        "H200",
        "B200",
        "Tesla V100",
        "Tesla T4",
    ):
        assert wanted in names
    seen = set()
    for info in GPUS:
        assert info.tflops > 0 and info.vram_gb > 0 and info.mem_bw_gbs > 0, info
        assert (info.name, info.vram_gb) not in seen, info
        seen.add((info.name, info.vram_gb))


@pytest.mark.parametrize(
    ("name", "tflops"),
    # lora-format.md §5 peak dense tensor figures
    [("RTX 3090", 71), ("RTX 4090", 165), ("A100 SXM4", 312), ("H100 SXM", 989), ("H100 PCIE", 756), ("H200", 989)],
)
def test_table_matches_the_reference_figures(name: str, tflops: float) -> None:
    match = match_gpu(name)
    assert match is not None and match.info.tflops == pytest.approx(tflops, rel=0.01)


@pytest.mark.parametrize(
    ("spelling", "vram", "canonical", "table_vram"),
    [
        ("RTX 4090", None, "RTX 4090", 24),
        ("NVIDIA GeForce RTX 4090", None, "RTX 4090", 24),  # RunPod id
        ("H100 SXM", None, "H100 SXM", 80),
        ("NVIDIA H100 80GB HBM3", None, "H100 SXM", 80),  # RunPod's id for the SXM part
        ("NVIDIA H100 PCIe", None, "H100 PCIE", 80),
        ("A100 SXM4", None, "A100 SXM4", 40),  # no size stated: the smaller variant
        ("A100 SXM4", 80.0, "A100 SXM4", 80),  # the offer's VRAM picks the variant
        ("NVIDIA A100-SXM4-80GB", None, "A100 SXM4", 80),  # the size in the name wins
        ("A100 PCIe", 80.0, "A100 PCIE", 80),  # RunPod display name
        ("RTX 6000Ada", None, "RTX 6000Ada", 48),  # Vast
        ("NVIDIA RTX 6000 Ada Generation", None, "RTX 6000Ada", 48),  # RunPod
        ("NVIDIA RTX A6000", None, "RTX A6000", 48),
        ("Tesla V100-SXM2-32GB", None, "V100 SXM2", 32),
        ("Q RTX 8000", None, "Q RTX 8000", 48),
        ("RTX 4070S Ti", None, "RTX 4070 Ti Super", 16),
        ("rtx_3090_ti", None, "RTX 3090 Ti", 24),
    ],
)
def test_provider_spellings_match_the_table(
    spelling: str, vram: float | None, canonical: str, table_vram: float
) -> None:
    match = match_gpu(spelling, vram)
    assert match is not None, spelling
    assert (match.info.name, match.info.vram_gb, match.how) == (canonical, table_vram, "exact")


def test_unknown_and_extended_names() -> None:
    assert match_gpu("Mystery GPU 9000") is None
    assert match_gpu("A800 PCIE") is None  # never guessed from a different model number
    longer = match_gpu("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition")
    assert longer is not None and longer.info.name == "RTX PRO 6000" and longer.how == "prefix"


@pytest.mark.parametrize(
    ("wanted", "name", "vram", "matches"),
    [
        ("4090", "RTX 4090", 24, True),
        ("4090", "NVIDIA GeForce RTX 4090", 24, True),
        ("RTX 4090", "RTX 4090 D", 24, False),
        ("A100", "A100 SXM4", 80, True),
        ("A100", "A100 PCIe", 40, True),
        ("A100 80GB", "A100 PCIE", 40, False),
        ("A100 80GB", "A100 PCIE", 80, True),
        ("H100", "NVIDIA H100 80GB HBM3", 80, True),
        ("L40", "L40S", 48, False),
        ("RTX 4070", "RTX 4070 Ti", 12, False),
        ("A6000", "NVIDIA RTX A6000", 48, True),
        ("6000 Ada", "RTX 6000Ada", 48, True),
    ],
)
def test_gpu_filter_names(wanted: str, name: str, vram: float, matches: bool) -> None:
    assert gpu_matches(wanted, name, vram) is matches


# ---- FLOPs per image -------------------------------------------------------------------------------------------


def test_flops_reproduce_the_measurements() -> None:
    assert unet_train_tflop("sd15", 512) == pytest.approx(1.78)
    assert unet_train_tflop("sd15", 512, gradient_checkpointing=True) == pytest.approx(2.44)
    assert unet_train_tflop("sdxl", 1024) == pytest.approx(14.6)
    assert unet_train_tflop("sdxl", 1024, gradient_checkpointing=True) == pytest.approx(20.8)
    # one VAE model fits both measured points
    assert vae_encode_tflop(512) == pytest.approx(1.12)
    assert vae_encode_tflop(1024) == pytest.approx(4.88)


def test_flops_grow_faster_than_pixels() -> None:
    # SD 2 at 768 px is SD 1.5's layout at 2.25× the pixels, plus attention's quadratic share
    sd2 = unet_train_tflop("sd2", 768)
    assert 1.78 * 2.25 < sd2 < 1.78 * 2.25**2
    assert sd2 == pytest.approx(4.80, abs=0.05)
    assert unet_train_tflop("sd15", 1024) > 4 * unet_train_tflop("sd15", 512)
    assert unet_train_tflop("sdxl", 512) < unet_train_tflop("sdxl", 1024) / 4 * 1.01


# ---- efficiency and calibration -------------------------------------------------------------------------------


def test_efficiency_curve_follows_the_guidance() -> None:
    # lora-format.md §5: ~10–15 % at batch 1–2, ~25–40 % at batch ≥ 4 on datacenter GPUs; consumer cards lower
    assert 0.10 <= table_efficiency("datacenter", 1) <= table_efficiency("datacenter", 2) <= 0.15
    assert 0.25 <= table_efficiency("datacenter", 4) <= table_efficiency("datacenter", 16) <= 0.40
    for batch in (1, 2, 3, 4, 6, 8, 32):
        assert table_efficiency("consumer", batch) <= table_efficiency("workstation", batch)
        assert table_efficiency("workstation", batch) <= table_efficiency("datacenter", batch)
    values = [table_efficiency("consumer", b) for b in range(1, 12)]
    assert values == sorted(values)


@pytest.mark.parametrize(
    ("gpu", "family", "resolution", "batch", "gc", "reported"),
    # images/s users report (lora-format.md §3); the model stays within 1.5× of each
    [
        ("RTX 4090", "sdxl", 1024, 1, False, 1.0),  # kohya_ss#1288: 1.08 it/s at batch 1
        ("RTX 4090", "sdxl", 1024, 8, True, 2.7),  # kohya_ss#1288: 3 s/it at batch 8, checkpointing
        ("RTX 4080", "sd15", 512, 1, False, 4.0),  # sd-scripts#724: ~4 it/s
        ("RTX 3070 Ti", "sd15", 512, 1, False, 3.0),  # sd-scripts#326: ~3 it/s
        ("RTX 3090", "sd15", 768, 6, False, 2.6),  # kohya_ss#1291: ~2.3 s/it at batch 6
        ("RTX 5090", "sdxl", 1024, 4, False, 2.3),  # kohya_ss#3332: 3.45 s/it, batch 4 × 2 accumulation
    ],
)
def test_table_reproduces_reported_speeds(
    gpu: str, family: str, resolution: int, batch: int, gc: bool, reported: float
) -> None:
    info = match_gpu(gpu)
    assert info is not None
    flops = unet_train_tflop(family, resolution, gradient_checkpointing=gc)
    modelled = info.info.tflops * table_efficiency(info.info.gpu_class, batch) / flops
    assert reported / 1.5 <= modelled <= reported * 1.5, modelled


def _throughput(**overrides):
    args = dict(
        gpu_id_="RTX 4090",
        gpu_class="consumer",
        peak_tflops=165.2,
        family="sdxl",
        resolution=1024,
        batch_size=2,
        gradient_checkpointing=False,
        tflop_per_sample=14.6,
        efficiency_overrides={},
        measurements={},
        train_text_encoder=False,  # so a train step is the UNet's 14.6 TFLOP alone
    )
    args.update(overrides)
    return training_throughput(**args)


def test_calibration_overrides_the_table() -> None:
    table = _throughput()
    assert table.source == "table"
    assert table.samples_per_second == pytest.approx(165.2 * table_efficiency("consumer", 2) / 14.6)

    measured = parse_calibration({calibration_key("NVIDIA GeForce RTX 4090", "sdxl", 1024, 2): 0.9})
    exact = _throughput(measurements=measured)
    assert exact.source == "measured" and exact.samples_per_second == 0.9

    # another batch size on the same GPU: the measured efficiency carried along the class curve
    other = _throughput(measurements=measured, batch_size=4)
    achieved = 0.9 * 14.6 / 165.2
    expected_eff = achieved * table_efficiency("consumer", 4) / table_efficiency("consumer", 2)
    assert other.source == "calibrated"
    assert other.efficiency == pytest.approx(expected_eff)
    assert other.samples_per_second < _throughput(batch_size=4).samples_per_second  # slower than the table said

    # a measurement on another GPU changes nothing here
    elsewhere = parse_calibration({calibration_key("H100 SXM", "sdxl", 1024, 2): 9.0})
    assert _throughput(measurements=elsewhere).source == "table"


def test_efficiency_setting_beats_the_table_but_not_an_exact_measurement() -> None:
    override = _throughput(efficiency_overrides={"RTX 4090": 0.5})
    assert override.source == "override" and override.samples_per_second == pytest.approx(165.2 * 0.5 / 14.6)
    measured = parse_calibration({"RTX 4090|sdxl|1024|2": 0.9})
    assert _throughput(efficiency_overrides={"RTX 4090": 0.5}, measurements=measured).source == "measured"


@pytest.mark.parametrize(
    "key", ["RTX 4090", "RTX 4090|sdxl|1024", "RTX 4090|sd3|1024|2", "RTX 4090|sdxl|big|2", "RTX 4090|sdxl|1024|2|x"]
)
def test_malformed_calibration_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="calibration"):
        parse_calibration({key: 1.0})


def test_calibration_values_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_calibration({"RTX 4090|sdxl|1024|2": 0.0})


# ---- VRAM and batch size -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "resolution", "vram", "batch", "gc", "fits"),
    [
        # the tutorial's advice
        ("sd15", 512, 24, 4, False, True),  # RTX 4090: 4 for SD 1.5
        ("sdxl", 1024, 24, 2, False, True),  # RTX 4090: 2 for SDXL
        ("sd15", 512, 40, 8, False, True),  # A100 40 GB: 6–8
        ("sdxl", 1024, 40, 4, False, True),  # A100 40 GB: 4
        ("sd15", 512, 12, 2, False, True),  # SD 1.5 is comfortable on 12 GB
        ("sd15", 512, 8, 1, False, True),  # and works small on 8 GB
        ("sdxl", 1024, 16, 2, True, True),  # SDXL's 16 GB minimum, with checkpointing turned on
        ("sdxl", 1024, 12, 1, True, False),  # below the minimum
    ],
)
def test_batch_recommendation(family: str, resolution: int, vram: float, batch: int, gc: bool, fits: bool) -> None:
    choice = choose_batch(
        family, resolution, vram, batch_size=None, gradient_checkpointing=False, train_text_encoder=True, headroom=0.85
    )
    assert (choice.batch_size, choice.gradient_checkpointing, choice.fits) == (batch, gc, fits)
    if gc and fits:
        assert "gradient checkpointing" in choice.note


def test_a_fixed_batch_is_checked_not_changed() -> None:
    too_big = choose_batch(
        "sdxl", 1024, 24, batch_size=8, gradient_checkpointing=False, train_text_encoder=True, headroom=0.85
    )
    assert (too_big.batch_size, too_big.gradient_checkpointing, too_big.fits) == (8, False, False)
    fine = choose_batch(
        "sdxl", 1024, 24, batch_size=8, gradient_checkpointing=True, train_text_encoder=False, headroom=0.85
    )
    assert fine.fits and fine.batch_size == 8
