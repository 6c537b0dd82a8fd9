"""The dataset scan and check as a library: layouts, captions, images, issues, facts and step counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from gpurun.dataset import DatasetReport, check_dataset, load_image, parse_folder_name, scan_dataset
from gpurun.errors import ConfigError, DatasetError
from tests.support.env import REPO_ROOT
from tests.support.imaging import make_concept, make_image

EXAMPLES = REPO_ROOT / "examples" / "dataset"


def codes(report: DatasetReport) -> list[tuple[str, str | None]]:
    return [(issue.code, issue.relative_path(report.scan.root)) for issue in report.issues]


# ---- the shipped example ---------------------------------------------------------------------------------


def test_example_dataset_passes_with_the_honest_warning_only() -> None:
    report = check_dataset(EXAMPLES, batch_size=2)
    assert report.ok
    assert codes(report) == [("few-images", ".")]
    assert report.scan.layout == "kohya-root"
    (folder,) = report.folders
    assert (folder.name, folder.repeats, folder.class_token) == ("10_gpurunbot", 10, "gpurunbot")
    assert (folder.images, folder.captioned, folder.with_trigger, folder.trigger) == (8, 8, 8, "gpurunbot")
    assert folder.min_side == 512 and folder.below_minimum == 0
    assert folder.aspect_ratios == {"1:1": 5, "3:2": 2, "2:3": 1}
    assert folder.buckets == {"384x640": 1, "512x512": 5, "640x384": 2}
    # 80 samples; per bucket at batch 2: 50/2 + 20/2 + 10/2 = 40 steps per epoch
    assert (report.samples_per_epoch, report.steps_per_epoch, report.total_steps) == (80, 40, 400)
    assert report.verdict == "OK: 8 images, 80 samples/epoch, 400 steps (1 warning)"
    assert all(item.sha256 for item in report.scan.items)


def test_example_captions_and_tag_frequency() -> None:
    scan = scan_dataset(EXAMPLES)
    assert scan.images == 8 and scan.samples_per_epoch == 80 and scan.total_bytes < 1_000_000
    for item in scan.items:
        assert item.caption.startswith("gpurunbot, ") and item.caption_path == item.path.with_suffix(".txt")
        assert item.folder == "10_gpurunbot" and item.repeats == 10
    frequency = scan.tag_frequency()
    assert list(frequency) == ["10_gpurunbot"]
    assert frequency["10_gpurunbot"]["gpurunbot"] == 8
    assert frequency["10_gpurunbot"]["glowing eyes"] == 2


# ---- layouts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("10_sks dog", (10, "sks dog")),
        ("10_sks_dog", (10, "sks_dog")),  # only the first underscore separates, as kohya joins the rest back
        ("3", (3, "")),
        ("0_x", (0, "x")),
        ("abc_concept", None),
        ("10sks", None),
    ],
)
def test_folder_names(name: str, parsed: tuple[int, str] | None) -> None:
    assert parse_folder_name(name) == parsed


def test_kohya_root_with_two_concepts(tmp_path: Path) -> None:
    make_concept(tmp_path, "10_sks dog", 3, caption="sks dog")
    make_concept(tmp_path, "5_style", 2, caption="style")
    scan = scan_dataset(tmp_path)
    assert scan.layout == "kohya-root"
    assert [(f.name, f.repeats, f.class_token, len(f.items)) for f in scan.folders] == [
        ("10_sks dog", 10, "sks dog", 3),
        ("5_style", 5, "style", 2),
    ]
    assert scan.samples_per_epoch == 40
    assert [item.path.name for item in scan.items] == [
        "img000.jpg",
        "img001.jpg",
        "img002.jpg",
        "img000.jpg",
        "img001.jpg",
    ]


def test_path_may_be_one_concept_folder(tmp_path: Path) -> None:
    folder = make_concept(tmp_path, "7_cat", 2)
    scan = scan_dataset(folder)
    assert scan.layout == "concept-folder"
    assert [(f.repeats, f.class_token) for f in scan.folders] == [(7, "cat")]
    assert [item.caption for item in scan.items] == ["cat", "cat"]  # no caption files: the class token


def test_plain_folder_needs_repeats(tmp_path: Path) -> None:
    for index in range(3):
        make_image(tmp_path / "photos" / f"p{index}.png", seed=index, caption=f"mychar, photo {index}")
    report = check_dataset(tmp_path / "photos")
    assert not report.ok
    assert ("needs-repeats", ".") in codes(report)
    assert "--repeats" in report.errors[0].message

    report = check_dataset(tmp_path / "photos", repeats=4, trigger="mychar", batch_size=1)
    assert report.ok and report.scan.layout == "plain"
    assert report.samples_per_epoch == 12 and report.folders[0].with_trigger == 3


def test_repeats_option_overrides_the_prefix(tmp_path: Path) -> None:
    make_concept(tmp_path, "10_x", 2)
    assert scan_dataset(tmp_path, repeats=3).samples_per_epoch == 6


def test_missing_path_and_file_path_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as info:
        scan_dataset(tmp_path / "nope")
    assert str(tmp_path / "nope") in info.value.one_line()
    file = make_image(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="not a folder"):
        check_dataset(file)


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    make_concept(tmp_path, "1_x", 1)
    with pytest.raises(ConfigError):
        scan_dataset(tmp_path, repeats=0)
    with pytest.raises(ConfigError):
        scan_dataset(tmp_path, caption_ext="")
    with pytest.raises(ConfigError, match="min_bucket_reso"):
        check_dataset(tmp_path, min_bucket_reso=1024, resolution=512)
    with pytest.raises(ConfigError, match="unknown model"):
        check_dataset(tmp_path, model="sd3")


def test_bad_and_ignored_folders(tmp_path: Path) -> None:
    make_concept(tmp_path, "10_good", 2)
    make_concept(tmp_path, "abc_concept", 1)
    make_concept(tmp_path, "0_x", 1)
    (tmp_path / "logs").mkdir()
    (tmp_path / ".cache").mkdir()  # hidden: never reported
    make_image(tmp_path / "stray.png")
    make_image(tmp_path / "10_good" / "extra" / "more.png")
    (tmp_path / "10_good" / "anim.gif").write_bytes(b"GIF89a")
    report = check_dataset(tmp_path)
    assert sorted(codes(report)) == sorted(
        [
            ("bad-folder-name", "0_x"),
            ("bad-folder-name", "abc_concept"),
            ("ignored-folder", "logs"),
            ("stray-image", "stray.png"),
            ("ignored-folder", "10_good/extra"),
            ("unsupported-image", "10_good/anim.gif"),
            ("missing-caption", "10_good/img000.jpg"),
            ("missing-caption", "10_good/img001.jpg"),
            ("few-images", "."),
        ]
    )
    assert [f.name for f in report.folders] == ["10_good"]
    message = {issue.relative_path(tmp_path): issue.message for issue in report.errors}
    assert "rename it like 10_abc_concept" in message["abc_concept"]
    assert "repeat count 0" in message["0_x"]


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "10_empty").mkdir()
    report = check_dataset(tmp_path)
    assert codes(report) == [("empty-dataset", ".")]
    assert report.verdict.startswith("1 error, 0 warnings")


# ---- captions --------------------------------------------------------------------------------------------


def test_caption_rules(tmp_path: Path) -> None:
    folder = tmp_path / "2_sks dog"
    make_image(folder / "a.jpg", seed=1, caption="sks dog, on grass\n")
    make_image(folder / "b.jpg", seed=2)  # no caption: the class token
    make_image(folder / "c.jpg", seed=3, caption="  \n")  # empty: the class token
    make_image(folder / "d.jpg", seed=4, caption="sks dog, first line\nsecond line\n")
    make_image(folder / "e.jpg", seed=5)
    (folder / "e.txt").write_bytes("\ufeffsks dog, with a BOM".encode())
    make_image(folder / "f.jpg", seed=6)
    (folder / "f.txt").write_bytes("sks dog, caf\xe9".encode("latin-1"))
    (folder / "orphan.txt").write_text("nobody's caption")
    report = check_dataset(tmp_path)
    captions = {item.path.name: (item.caption, item.caption_path is not None) for item in report.scan.items}
    assert captions == {
        "a.jpg": ("sks dog, on grass", True),
        "b.jpg": ("sks dog", False),
        "c.jpg": ("sks dog", False),
        "d.jpg": ("sks dog, first line", True),
        "e.jpg": ("sks dog, with a BOM", True),
        "f.jpg": ("sks dog", False),
    }
    assert sorted(codes(report)) == sorted(
        [
            ("caption-not-utf8", "2_sks dog/f.txt"),
            ("missing-caption", "2_sks dog/b.jpg"),
            ("empty-caption", "2_sks dog/c.txt"),
            ("multiline-caption", "2_sks dog/d.txt"),
            ("orphan-caption", "2_sks dog/orphan.txt"),
            ("few-images", "."),
        ]
    )
    not_utf8 = report.errors[0]
    assert "byte 0xe9 at offset 12" in not_utf8.message


def test_caption_extension_mismatch_is_loud(tmp_path: Path) -> None:
    folder = tmp_path / "10_x"
    for index in range(3):
        make_image(folder / f"{index}.png", seed=index)
        (folder / f"{index}.caption").write_text(f"x, thing {index}")
    report = check_dataset(tmp_path)
    mismatch = [issue for issue in report.issues if issue.code == "caption-extension-mismatch"]
    assert len(mismatch) == 1 and "NO CAPTIONS USED" in mismatch[0].message
    assert "--caption-ext .caption" in mismatch[0].message
    missing = [issue for issue in report.issues if issue.code == "missing-caption"]
    assert len(missing) == 3 and "0.caption exists" in missing[0].message

    report = check_dataset(tmp_path, caption_ext="caption")  # the dot is optional
    assert report.scan.caption_ext == ".caption"
    assert [issue.code for issue in report.issues] == ["few-images"]
    assert report.folders[0].captioned == 3


def test_trigger_coverage(tmp_path: Path) -> None:
    folder = tmp_path / "10_sks"
    make_image(folder / "a.png", seed=1, caption="SKS, portrait")
    make_image(folder / "b.png", seed=2, caption="sksdog on a sofa")  # not the word
    make_image(folder / "c.png", seed=3)  # falls back to "sks"
    report = check_dataset(tmp_path)
    assert report.folders[0].trigger == "sks" and report.folders[0].trigger_source == "folder"
    assert report.folders[0].with_trigger == 2
    assert [(c, p) for c, p in codes(report) if c == "missing-trigger"] == [("missing-trigger", "10_sks/b.txt")]

    report = check_dataset(tmp_path, trigger="portrait")
    assert report.folders[0].trigger_source == "option" and report.folders[0].with_trigger == 1
    assert sorted(p for c, p in codes(report) if c == "missing-trigger") == ["10_sks/b.txt"]


# ---- images ----------------------------------------------------------------------------------------------


def test_image_problems(tmp_path: Path) -> None:
    folder = tmp_path / "10_x"
    make_image(folder / "ok.jpg", seed=1)
    (folder / "zero.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"this is not a JPEG at all" * 20)
    make_image(folder / "cmyk.jpg", seed=2, mode="CMYK")
    make_image(folder / "alpha.png", seed=3, mode="RGBA")
    make_image(folder / "palette.png", seed=4, mode="P")
    with Image.open(folder / "palette.png") as palette:
        palette.load()
        palette.save(folder / "palette.png", transparency=0)
    Image.new("I;16", (512, 512), 1000).save(folder / "deep.png")
    make_image(folder / "rotated.jpg", (600, 800), seed=5, orientation=6)
    make_image(folder / "tiny.png", (128, 96), seed=6)
    report = check_dataset(tmp_path)
    found = sorted((code, path) for code, path in codes(report) if code not in ("missing-caption", "few-images"))
    assert found == [
        ("below-minimum", "10_x/tiny.png"),
        ("exif-rotated", "10_x/rotated.jpg"),
        ("transparency", "10_x/alpha.png"),
        ("transparency", "10_x/palette.png"),
        ("unreadable-image", "10_x/garbage.jpg"),
        ("unusual-mode", "10_x/cmyk.jpg"),
        ("unusual-mode", "10_x/deep.png"),
        ("zero-byte-file", "10_x/zero.png"),
    ]
    rotated = next(item for item in report.scan.items if item.path.name == "rotated.jpg")
    assert (rotated.width, rotated.height, rotated.exif_orientation) == (800, 600, 6)  # displayed size
    tiny = next(issue for issue in report.issues if issue.code == "below-minimum")
    assert "128×96" in tiny.message and "upscaled" in tiny.message
    assert {item.path.name for item in report.scan.items} == {
        "ok.jpg", "cmyk.jpg", "alpha.png", "palette.png", "deep.png", "rotated.jpg", "tiny.png"
    }  # fmt: skip


def test_model_minimum(tmp_path: Path) -> None:
    make_concept(tmp_path, "10_x", 2, size=(768, 640), caption="x")
    assert check_dataset(tmp_path, model="sd15").folders[0].below_minimum == 0
    report = check_dataset(tmp_path, model="sdxl")
    assert report.folders[0].below_minimum == 2
    assert [c for c, _ in codes(report)].count("below-minimum") == 2
    assert report.settings.resolution == (1024, 1024)


def test_duplicates_need_the_full_check(tmp_path: Path) -> None:
    folder = make_concept(tmp_path, "10_x", 2, caption="x")
    shutil.copy(folder / "img000.jpg", folder / "copy.jpg")
    shutil.copy(folder / "img000.txt", folder / "copy.txt")
    report = check_dataset(tmp_path)
    dupes = [issue for issue in report.issues if issue.code == "duplicate-image"]
    # files are visited in name order: copy.jpg comes first, so img000.jpg is reported as its duplicate
    assert [(d.relative_path(tmp_path), d.message.split(":")[0]) for d in dupes] == [
        ("10_x/img000.jpg", "exact duplicate of 10_x/copy.jpg")
    ]
    assert report.images == 3 and report.samples_per_epoch == 30  # a duplicate still trains
    assert not [issue for issue in check_dataset(tmp_path, verify=False).issues if issue.code == "duplicate-image"]


def test_truncated_image_is_found_only_by_the_full_check(tmp_path: Path) -> None:
    folder = make_concept(tmp_path, "10_x", 2, caption="x")
    data = (folder / "img001.jpg").read_bytes()
    (folder / "img001.jpg").write_bytes(data[: len(data) // 2])
    quick = check_dataset(tmp_path, verify=False)
    assert quick.ok and quick.images == 2 and not quick.verified
    full = check_dataset(tmp_path)
    assert not full.ok and full.images == 1
    assert codes(full)[0] == ("truncated-image", "10_x/img001.jpg")
    assert "truncated" in full.errors[0].message


def test_header_only_scan_decodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_concept(tmp_path, "1_many", 151, size=(64, 64), caption="many")
    decoded: list[str] = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        decoded.append(str(getattr(self, "filename", "") or "bytes"))
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    progress: list[tuple[int, int]] = []
    report = check_dataset(tmp_path, verify=False, progress=lambda done, total: progress.append((done, total)))
    assert report.images == 151 and decoded == [] and progress == []
    assert ("many-images", ".") in codes(report)

    report = check_dataset(tmp_path, verify=True, progress=lambda done, total: progress.append((done, total)))
    assert len(decoded) == 151
    assert progress[-1] == (151, 151) and len(progress) == 151


# ---- steps and the report --------------------------------------------------------------------------------


def test_steps_are_counted_per_bucket(tmp_path: Path) -> None:
    make_concept(tmp_path, "10_x", 3, caption="x")  # 512x512: 30 samples
    make_image(tmp_path / "10_x" / "wide.jpg", (768, 512), seed=9, caption="x")  # 640x384: 10 samples
    report = check_dataset(tmp_path, batch_size=4, epochs=3)
    assert report.samples_per_epoch == 40
    assert [(b.resolution, b.samples, b.batches) for b in report.buckets] == [((512, 512), 30, 8), ((640, 384), 10, 3)]
    assert (report.steps_per_epoch, report.total_steps) == (11, 33)  # not ceil(40 / 4) = 10

    flat = check_dataset(tmp_path, batch_size=4, epochs=3, enable_bucket=False)
    assert [(b.resolution, b.samples) for b in flat.buckets] == [((512, 512), 40)]
    assert (flat.steps_per_epoch, flat.total_steps) == (10, 30)
    assert flat.to_dict()["totals"]["step_counting"] == "single-bucket"

    assert check_dataset(tmp_path, batch_size=4, gradient_accumulation_steps=2).steps_per_epoch == 6
    by_steps = check_dataset(tmp_path, batch_size=4, max_train_steps=25)
    assert (by_steps.total_steps, by_steps.epochs) == (25, 3)

    # bucket_no_upscale: 768x512 is larger than 512² so it shrinks to the area (576x384, still 3:2)
    no_upscale = check_dataset(tmp_path, batch_size=4, bucket_no_upscale=True)
    assert [b.resolution for b in no_upscale.buckets] == [(512, 512), (576, 384)]


def test_report_document(tmp_path: Path) -> None:
    make_concept(tmp_path, "10_sks dog", 2, caption="sks dog")
    (tmp_path / "10_sks dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    report = check_dataset(tmp_path, batch_size=2)
    document = json.loads(json.dumps(report.to_dict()))
    assert document["version"] == 1 and document["ok"] is False
    assert document["path"] == str(tmp_path.resolve())
    assert document["layout"] == "kohya-root" and document["model"] == "sd15" and document["min_image_side"] == 512
    assert document["caption_extension"] == ".txt" and document["verified"] is True
    assert document["settings"]["resolution"] == [512, 512] and document["settings"]["batch_size"] == 2
    (folder,) = document["folders"]
    assert folder["path"] == "10_sks dog" and folder["images"] == 2 and folder["smallest"] == [512, 512]
    assert document["totals"]["samples_per_epoch"] == 20 and document["totals"]["total_steps"] == 100
    assert document["errors"] == 1 and document["warnings"] == 1
    assert document["issues"][0] == {
        "severity": "error",
        "code": "unreadable-image",
        "path": "10_sks dog/broken.png",
        "message": document["issues"][0]["message"],
    }
    assert document["issues"][1]["code"] == "few-images"  # errors come first
    assert document["verdict"] == "1 error, 1 warning: fix the errors before renting a GPU"


def test_load_image_is_upright_rgb_on_white(tmp_path: Path) -> None:
    rotated = load_image(make_image(tmp_path / "r.jpg", (600, 800), orientation=6))
    assert rotated.mode == "RGB" and rotated.size == (800, 600)
    alpha = load_image(make_image(tmp_path / "a.png", (64, 64), mode="RGBA"))
    assert alpha.mode == "RGB" and alpha.getpixel((0, 0)) == (255, 255, 255)
    cmyk = load_image(make_image(tmp_path / "c.jpg", (64, 64), mode="CMYK"))
    assert cmyk.mode == "RGB"
