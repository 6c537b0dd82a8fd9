"""`gpurun dataset check` as a user runs it: the example passes, a broken copy fails precisely, --json agrees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.env import REPO_ROOT, TUTORIAL_CONFIG, subprocess_env
from tests.support.imaging import make_concept, make_image
from tests.support.kohya_datasets import make_dataset_config, make_reg_dirs

ROOT = REPO_ROOT
EXAMPLES = ROOT / "examples" / "dataset"
FIXTURE_CONFIG = TUTORIAL_CONFIG
HEAVY = ("torch", "diffusers", "transformers", "peft", "bitsandbytes", "accelerate")


def issue_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(("error ", "warning "))]


def test_example_dataset_passes(gpurun_cli) -> None:
    result = gpurun_cli("dataset", "check", "examples/dataset")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "OK: 8 images, 80 samples/epoch, 400 steps (1 warning)"
    assert "10_gpurunbot" in result.stdout and '"gpurunbot" (from the folder name): in 8/8 captions' in result.stdout
    assert "384x640 ×1, 512x512 ×5, 640x384 ×2" in result.stdout
    assert "40 steps/epoch (batches counted per bucket, as kohya does) × 10 epochs = 400 steps" in result.stdout
    assert "kohya's own default is .caption" in result.stdout
    assert issue_lines(result.stdout) == [
        "warning examples/dataset: only 8 training image(s): 15–20 is the minimum for reasonable results, "
        "20–40 suit a simple concept"
    ]
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_example_dataset_json(gpurun_cli) -> None:
    result = gpurun_cli("dataset", "check", "examples/dataset", "--json", "--no-verify", "--model", "sdxl")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["version"] == 1 and document["ok"] is True and document["verified"] is False
    assert document["model"] == "sdxl" and document["min_image_side"] == 1024
    assert document["settings"]["resolution"] == [1024, 1024]  # the sdxl preset
    assert document["folders"][0]["below_minimum"] == 8
    assert {issue["code"] for issue in document["issues"]} == {"few-images", "below-minimum"}


def build_broken_copy(tmp_path: Path) -> tuple[Path, set[tuple[str, str, str]]]:
    """examples/dataset with one deliberate problem per file; returns it and the expected (severity, code, path)."""
    root = tmp_path / "broken"
    shutil.copytree(EXAMPLES, root)
    concept = root / "10_gpurunbot"
    (concept / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG body" * 30)
    (concept / "corrupt.txt").write_text("gpurunbot, corrupt")
    meadow = (concept / "meadow.jpg").read_bytes()
    (concept / "truncated.jpg").write_bytes(meadow[: len(meadow) // 2])
    (concept / "truncated.txt").write_text("gpurunbot, truncated")
    (concept / "empty.png").write_bytes(b"")
    (concept / "beach.txt").write_bytes("gpurunbot, a robot on the plage, soleil couch\xe9".encode("latin-1"))
    (concept / "snow.txt").unlink()
    make_image(concept / "tiny.png", (128, 128), seed=1, caption="gpurunbot, tiny")
    make_image(root / "abc_concept" / "a.png", seed=2, caption="gpurunbot")
    make_image(root / "0_x" / "b.png", seed=3, caption="gpurunbot")
    make_image(concept / "cmyk.jpg", seed=4, mode="CMYK", caption="gpurunbot, cmyk")
    make_image(concept / "alpha.png", seed=5, mode="RGBA", caption="gpurunbot, alpha")
    make_image(concept / "rotated.jpg", (512, 768), seed=6, orientation=8, caption="gpurunbot, rotated")
    shutil.copy(concept / "city.jpg", concept / "zz_city_copy.jpg")
    (concept / "zz_city_copy.txt").write_text("gpurunbot, copy")
    (concept / "ghost.txt").write_text("gpurunbot, no image")
    expected = {
        ("error", "unreadable-image", "10_gpurunbot/corrupt.jpg"),
        ("error", "truncated-image", "10_gpurunbot/truncated.jpg"),
        ("error", "zero-byte-file", "10_gpurunbot/empty.png"),
        ("error", "caption-not-utf8", "10_gpurunbot/beach.txt"),
        ("error", "bad-folder-name", "abc_concept"),
        ("error", "bad-folder-name", "0_x"),
        ("warning", "missing-caption", "10_gpurunbot/snow.jpg"),
        ("warning", "below-minimum", "10_gpurunbot/tiny.png"),
        ("warning", "unusual-mode", "10_gpurunbot/cmyk.jpg"),
        ("warning", "transparency", "10_gpurunbot/alpha.png"),
        ("warning", "exif-rotated", "10_gpurunbot/rotated.jpg"),
        ("warning", "duplicate-image", "10_gpurunbot/zz_city_copy.jpg"),
        ("warning", "orphan-caption", "10_gpurunbot/ghost.txt"),
        ("warning", "few-images", "."),  # 13 usable images
    }
    return root, expected


def test_broken_copy_fails_with_one_precise_line_per_problem(gpurun_cli, tmp_path: Path) -> None:
    root, expected = build_broken_copy(tmp_path)
    result = gpurun_cli("dataset", "check", str(root))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = issue_lines(result.stdout)
    assert len(lines) == len(expected)
    for severity, _code, path in expected:
        where = str(root) if path == "." else f"{root}/{path}"
        matching = [line for line in lines if line.split()[0] == severity and f" {where}: " in line]
        assert len(matching) == 1, (path, lines)
    assert result.stdout.splitlines()[-1] == "6 errors, 8 warnings: fix the errors before renting a GPU"

    as_json = gpurun_cli("dataset", "check", str(root), "--json")
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["ok"] is False and (document["errors"], document["warnings"]) == (6, 8)
    assert {(i["severity"], i["code"], i["path"]) for i in document["issues"]} == expected
    # the text lines and the JSON issues are the same issues, in the same order
    as_text = [" ".join(line.split(None, 1)) for line in lines]  # "error   x" → "error x"
    assert as_text == [
        f"{i['severity']} {root if i['path'] == '.' else root / i['path']}: {i['message']}" for i in document["issues"]
    ]


def test_broken_copy_messages_say_what_and_how(tmp_path: Path) -> None:
    from gpurun.dataset import check_dataset

    root, _ = build_broken_copy(tmp_path)
    messages = {(i.code, i.relative_path(root)): i.message for i in check_dataset(root).issues}
    assert "truncated image" in messages[("truncated-image", "10_gpurunbot/truncated.jpg")]
    assert "zero-byte file" in messages[("zero-byte-file", "10_gpurunbot/empty.png")]
    assert "not UTF-8" in messages[("caption-not-utf8", "10_gpurunbot/beach.txt")]
    assert "rename it like 10_abc_concept" in messages[("bad-folder-name", "abc_concept")]
    assert "128×128" in messages[("below-minimum", "10_gpurunbot/tiny.png")]
    assert "CMYK" in messages[("unusual-mode", "10_gpurunbot/cmyk.jpg")]
    assert "exact duplicate of 10_gpurunbot/city.jpg" in messages[("duplicate-image", "10_gpurunbot/zz_city_copy.jpg")]
    assert 'trains with the caption "gpurunbot"' in messages[("missing-caption", "10_gpurunbot/snow.jpg")]


def test_plain_folder_needs_repeats(gpurun_cli, tmp_path: Path) -> None:
    for index in range(2):
        make_image(tmp_path / "photos" / f"{index}.png", seed=index, caption="me")
    result = gpurun_cli("dataset", "check", str(tmp_path / "photos"))
    assert result.returncode == 1 and "--repeats" in result.stdout
    result = gpurun_cli("dataset", "check", str(tmp_path / "photos"), "--repeats", "5", "--trigger", "me", "--json")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["layout"] == "plain" and document["totals"]["samples_per_epoch"] == 10
    assert document["folders"][0]["with_trigger"] == 2 and document["trigger"] == "me"


def test_config_supplies_dataset_and_settings(gpurun_cli, tmp_path: Path) -> None:
    config = tmp_path / "training_config.toml"
    shutil.copy(FIXTURE_CONFIG, config)  # train_data_dir = "./training_data", relative to the config file
    make_concept(tmp_path / "training_data", "10_sks dog", 4, size=(768, 512), caption="sks dog")
    result = gpurun_cli("dataset", "check", "--config", str(config), "--json", cwd=tmp_path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["path"] == str((tmp_path / "training_data").resolve())
    assert document["settings"]["batch_size"] == 2 and document["settings"]["epochs"] == 10
    assert document["settings"]["resolution"] == [512, 512] and document["settings"]["enable_bucket"] is True
    # 40 samples in the 640x384 bucket at batch 2 → 20 steps per epoch, 10 epochs
    assert document["totals"]["total_steps"] == 200

    override = gpurun_cli("dataset", "check", "--config", str(config), "--batch-size", "4", "--epochs", "2", "--json")
    assert json.loads(override.stdout)["totals"]["total_steps"] == 20

    text = gpurun_cli("dataset", "check", "--config", str(config))
    assert f"settings ({config})" in text.stdout


def test_config_with_a_dataset_config_checks_its_subsets(gpurun_cli, tmp_path: Path) -> None:
    make_dataset_config(tmp_path)
    config = tmp_path / "training_config.toml"
    config.write_text('dataset_config = "dataset.toml"\nmax_train_epochs = 1\n')
    result = gpurun_cli("dataset", "check", "--config", str(config), "--json", "--model", "sd15")
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["layout"] == "dataset-config" and document["path"] == str(tmp_path)
    folders = {f["path"]: (f["repeats"], f["samples_per_epoch"], f["is_reg"]) for f in document["folders"]}
    # paths relative to the dataset config's folder; the reg subset balanced to the 8 training samples
    assert folders == {"images/robot": (3, 6, False), "images/closeups": (2, 2, False), "images/reg": (1, 8, True)}
    assert document["settings"]["batch_size"] == 2 and document["totals"]["total_steps"] == 8
    text = gpurun_cli("dataset", "check", "--config", str(config))
    assert "kohya dataset config" in text.stdout and "regularization, balanced as kohya" in text.stdout
    both = gpurun_cli("dataset", "check", str(tmp_path), "--config", str(config))
    assert both.returncode == 1 and "dataset_config were both given" in both.stderr


def test_config_with_reg_data_dir_counts_the_reg_images(gpurun_cli, tmp_path: Path) -> None:
    train, reg = make_reg_dirs(tmp_path)
    config = tmp_path / "training_config.toml"
    config.write_text(f'train_data_dir = "{train}"\nreg_data_dir = "{reg}"\ntrain_batch_size = 1\n')
    document = json.loads(gpurun_cli("dataset", "check", "--config", str(config), "--json").stdout)
    assert [(f["name"], f["is_reg"], f["samples_per_epoch"]) for f in document["folders"]] == [
        ("2_sks robot", False, 6),
        ("1_robot", True, 6),
    ]


def test_config_pointing_at_a_missing_folder(gpurun_cli, tmp_path: Path) -> None:
    config = tmp_path / "training_config.toml"
    shutil.copy(FIXTURE_CONFIG, config)
    result = gpurun_cli("dataset", "check", "--config", str(config))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "dataset folder not found" in lines[0]
    assert str(tmp_path / "training_data") in lines[0]


def test_no_path_and_no_config_is_a_clear_error(gpurun_cli) -> None:
    result = gpurun_cli("dataset", "check", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "ConfigError"
    assert "no dataset folder given" in result.stderr


@pytest.mark.parametrize("args", [["--repeats", "0"], ["--model", "sd3"]])
def test_bad_options_are_usage_errors(gpurun_cli, args: list[str]) -> None:
    assert gpurun_cli("dataset", "check", "examples/dataset", *args).returncode == 2


def test_check_loads_no_training_stack() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpurun", "dataset", "check", "examples/dataset", "--json"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
    )
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "PIL" in imported and not imported & set(HEAVY)


def test_example_images_are_small_and_real() -> None:
    files = sorted((EXAMPLES / "10_gpurunbot").iterdir())
    assert sum(f.stat().st_size for f in files) < 1_000_000
    images = [f for f in files if f.suffix in (".jpg", ".png")]
    assert len(images) == 8
    sizes = set()
    for image in images:
        with Image.open(image) as opened:
            sizes.add(opened.size)
    assert sizes == {(512, 512), (768, 512), (512, 768)}
    assert {f.suffix for f in images} == {".jpg", ".png"}
    for image in images:
        assert "gpurunbot" in image.with_suffix(".txt").read_text(encoding="utf-8")
