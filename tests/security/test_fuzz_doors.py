"""Seeded fuzzing of gpurun's front doors: hostile datasets, configs and vendor answers through the real CLI.

Every case must end in exit 0 or a clear error (exit 1), never a traceback; what is printed carries no raw escape
sequence, and `--json` output is always one valid JSON document with finite numbers. The seeds are fixed, so a
failure names its case and reproduces; GPURUN_FUZZ_CASES raises the count for a longer hunt.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpurun.cli import main
from gpurun.trainconfig import SECTION_OF
from tests.support.fakes.vast_catalog import vast_offer
from tests.support.fakes.vast_query import priced
from tests.support.imaging import make_image

CASES = int(os.environ.get("GPURUN_FUZZ_CASES", "40"))


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`gpurun ARGS` in this process; any exception other than the CLI's own exit fails the test with its case."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _reject_constant(name: str) -> float:
    raise AssertionError(f"non-finite number {name} in --json output")


def assert_clean(case: str, code: int, out: str, err: str, *, as_json: bool) -> dict[str, Any] | None:
    assert code in (0, 1), f"{case}: exit {code}\n{err[-2000:]}"
    assert "Traceback" not in out + err, f"{case}: traceback\n{err[-3000:]}"
    assert "\x1b" not in out + err and "\x00" not in out + err, f"{case}: a raw control character reached the terminal"
    if code == 1:
        assert err.strip() or out.strip(), f"{case}: failed without saying why"
    if not as_json:
        return None
    doc = json.loads(out, parse_constant=_reject_constant)
    assert isinstance(doc, dict), f"{case}: --json printed {type(doc).__name__}"
    return doc


def walk_numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in walk_numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in walk_numbers(item)]
    return []


# ---- hostile datasets -------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "a\nb.png", "\x1b[2Jclear.png", "bell\x07.jpg", "[bold]markup[/].png", "-rf.png", "x" * 250 + ".png",
    "caption\ttab.jpg", "über ünïcode.png", "space .png", " lead.png", "a..png", "a.PNG", "b.JpEg",
]  # fmt: skip
HOSTILE_FOLDERS = ["10_\x1b[31mred", "0_zero", "-1_neg", "99999999999999999999_big", "10_", "abc", "10_[b]x[/b]"]


def _truncated_png(path: Path, rng: random.Random) -> None:
    make_image(path, (520, 520), seed=rng.randrange(1000))
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(8, max(9, len(data) // 2))])


def _random_bytes_image(path: Path, rng: random.Random) -> None:
    path.write_bytes(rng.randbytes(rng.randrange(1, 3000)))


def _hostile_caption(path: Path, rng: random.Random) -> None:
    choices: list[bytes] = [
        b"\xff\xfe\xfa not utf-8", b"nul\x00inside", b"\x1b]0;title\x07osc", b"[red]markup[/red]",
        b"sks " * 20000, b"", b"\n\n\n", b"line one\nline two", "\u202eright-to-left".encode(),
    ]  # fmt: skip
    path.write_bytes(rng.choice(choices))


def _mutate_dataset(root: Path, rng: random.Random, outside: Path) -> list[str]:
    concept = root / "10_sks"
    done: list[str] = []
    for _ in range(rng.randrange(1, 4)):
        kind = rng.choice(["name", "folder", "link", "truncated", "bytes", "caption", "fifo", "dir-as-image", "bomb"])
        done.append(kind)
        if kind == "name":
            make_image(concept / rng.choice(HOSTILE_NAMES), (512, 600), seed=rng.randrange(1000))
        elif kind == "folder":
            make_image(root / rng.choice(HOSTILE_FOLDERS) / "in.png", (512, 512), seed=rng.randrange(1000))
        elif kind == "link":
            target = rng.choice([outside, Path("/etc/passwd"), concept / "missing.png", root, concept / "img0.png"])
            link = concept / f"link{rng.randrange(100)}.png"
            if not link.exists() and not link.is_symlink():
                link.symlink_to(target)
        elif kind == "truncated":
            _truncated_png(concept / f"cut{rng.randrange(100)}.png", rng)
        elif kind == "bytes":
            _random_bytes_image(concept / f"noise{rng.randrange(100)}.jpg", rng)
        elif kind == "caption":
            _hostile_caption(concept / f"img{rng.randrange(3)}.txt", rng)
        elif kind == "fifo":
            fifo = concept / f"pipe{rng.randrange(100)}.png"
            if not fifo.exists():
                os.mkfifo(fifo)
        elif kind == "dir-as-image":
            (concept / f"folder{rng.randrange(100)}.png").mkdir(exist_ok=True)
        elif kind == "bomb":
            make_image(concept / "bomb.png", (16, 16))
            data = bytearray((concept / "bomb.png").read_bytes())
            data[16:24] = (60000).to_bytes(4, "big") * 2  # IHDR width and height: 3.6 gigapixels
            (concept / "bomb.png").write_bytes(bytes(data))
    return done


@pytest.mark.timeout(300)
def test_hostile_datasets_get_a_clear_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside.png"
    make_image(outside, (512, 512))
    verdicts = {0: 0, 1: 0}
    for seed in range(CASES):
        rng = random.Random(seed)
        root = tmp_path / f"case{seed}"
        for index in range(3):
            make_image(root / "10_sks" / f"img{index}.png", (512, 512), seed=index, caption="sks dog")
        kinds = _mutate_dataset(root, rng, outside)
        case = f"dataset seed={seed} {kinds}"
        code, out, err = run_cli(capsys, "dataset", "check", str(root))
        assert_clean(case, code, out, err, as_json=False)
        code_json, out, err = run_cli(capsys, "dataset", "check", str(root), "--json")
        doc = assert_clean(case, code_json, out, err, as_json=True)
        assert code_json == code, f"{case}: --json and text disagree"
        assert doc is not None and doc.get("ok") is (code == 0), case
        verdicts[code] += 1
        shutil.rmtree(root)
    assert verdicts[1] > 0  # the generator does produce broken datasets


# ---- hostile configs -------------------------------------------------------------------------------------

TOML_VALUES = [
    "nan", "inf", "-inf", "-1", "0", "1e308", "99999999999999999999", '"\\u001b[2J"', '""', "[]", '[1, "a"]',
    "{a = 1}", "true", '"../../etc/passwd"', '"' + "x" * 5000 + '"', "2026-12-04T10:00:00Z", '"\\u0000"',
    '"[bold]x[/bold]"', "0.5", "3", '"adamw8bit"', '"euler_a"', "[[1], [2]]",
]  # fmt: skip
TOML_JUNK = ["[training", "= 3", "a = ", "[[dataset]]\nx = 1", "\x00", "a = 1\na = 2", "[model]\n[model]"]


def _hostile_config(rng: random.Random) -> bytes:
    keys = sorted(SECTION_OF)
    lines: dict[str, list[str]] = {}
    for _ in range(rng.randrange(1, 5)):
        key = rng.choice([*keys, "no_such_key", "__class__", "output_name", "learning_rate"])
        section = SECTION_OF.get(key, rng.choice(["training", "dataset", "nonsense"]))
        lines.setdefault(section, []).append(f"{key} = {rng.choice(TOML_VALUES)}")
    text = "".join(f"[{section}]\n" + "\n".join(body) + "\n" for section, body in lines.items())
    if rng.random() < 0.2:
        text += rng.choice(TOML_JUNK) + "\n"
    data = text.encode()
    if rng.random() < 0.1:
        data = b"\xff\xfe" + data  # not UTF-8 at all
    return data


@pytest.mark.timeout(300)
def test_hostile_configs_get_a_clear_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused = 0
    for seed in range(CASES * 3):
        rng = random.Random(1000 + seed)
        path = tmp_path / f"case{seed}.toml"
        path.write_bytes(_hostile_config(rng))
        case = f"config seed={seed}:\n{path.read_bytes()[:600]!r}"
        code, out, err = run_cli(capsys, "config", "check", str(path))
        assert_clean(case, code, out, err, as_json=False)
        if code == 1:
            refused += 1
            assert path.name in err, f"{case}: the error does not name the file\n{err}"
        code_json, out, err = run_cli(capsys, "config", "check", str(path), "--json")
        doc = assert_clean(case, code_json, out, err, as_json=True)
        assert code_json == code and doc is not None and doc["ok"] is (code == 0), case
    assert refused > CASES  # most hostile configs are refused, and every one of them cleanly


# ---- hostile vendor answers ------------------------------------------------------------------------------

VENDOR_VALUES: list[Any] = [
    None, math.nan, math.inf, -math.inf, -1, 0, -0.0, 1e308, 10**30, "", "12.5", "\x1b[2J", "[bold]x[/]", [], {},
    True, "x" * 10_000, [1, 2], {"a": None},
]  # fmt: skip


def _mutated(payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    mutated = dict(payload)
    for key in rng.sample(sorted(mutated), rng.randrange(1, 6)):
        if rng.random() < 0.15:
            del mutated[key]
        else:
            mutated[key] = rng.choice(VENDOR_VALUES)
    return mutated


def _vast_body(rng: random.Random, fake: Any) -> Any:
    if rng.random() < 0.1:
        return rng.choice([[], "offers", None, {"offers": {}}, {"offers": [1, "x", None]}, {"no": "offers"}])
    gpus = ["RTX 4090", "RTX 3090", "A100 SXM4"]
    listed = [priced(vast_offer(rng.choice(gpus)), allocated_storage=30, pricing="on-demand") for _ in range(4)]
    return {"offers": [_mutated(offer, rng) for offer in listed]}


def _runpod_body(rng: random.Random, fake: Any) -> Any:
    if rng.random() < 0.1:
        broken = [{"data": None}, {"data": {"gpuTypes": {}}}, {"errors": "x"}, [], {"data": {"gpuTypes": [7]}}]
        return rng.choice(broken)
    rows = []
    for gpu_type in rng.sample(fake.gpu_types, min(4, len(fake.gpu_types))):
        row = {key: value for key, value in gpu_type.items() if not key.startswith("_")}
        lowest = fake.lowest_price(gpu_type, {"gpuCount": 1, "secureCloud": rng.random() < 0.5})
        row["lowestPrice"] = _mutated(lowest, rng) if rng.random() < 0.7 else lowest
        rows.append(_mutated(row, rng) if rng.random() < 0.7 else row)
    return {"data": {"gpuTypes": rows}}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("provider", "path", "body_of"),
    [("vast", "/bundles", _vast_body), ("runpod", "graphql", _runpod_body)],
)
def test_hostile_vendor_answers_never_become_a_crash_or_a_bogus_price(
    provider: str,
    path: str,
    body_of: Callable[[random.Random, Any], Any],
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = request.getfixturevalue(f"fake_{provider}")
    listed = 0
    for seed in range(CASES):
        rng = random.Random(2000 + seed)
        body = body_of(rng, fake)
        fake.inject_answer(200, body, path=path, times=100)
        case = f"{provider} seed={seed}: {json.dumps(body)[:600]}"
        code, out, err = run_cli(capsys, "offers", "--provider", provider, "--model", "sd15", "--json")
        doc = assert_clean(case, code, out, err, as_json=True)
        assert doc is not None
        for offer in doc.get("offers", []):
            listed += 1
            numbers = walk_numbers(offer)
            assert all(math.isfinite(n) for n in numbers), case
            price = offer.get("price_per_hour")
            assert isinstance(price, (int, float)) and 0 < price < 1000, f"{case}: listed at {price}"
        code, out, err = run_cli(capsys, "offers", "--provider", provider, "--model", "sd15")
        assert_clean(case, code, out, err, as_json=False)
        fake.clear_faults()  # the next case's answer
    assert listed > 0  # some mutated offers are still sane enough to list
