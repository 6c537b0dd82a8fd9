"""`--base` resolution: shortcuts, files, folders, hub ids, URLs, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from gpurun.job.bases import resolve_base


@pytest.mark.parametrize(
    ("spec", "kind", "family", "preset"),
    [
        ("sd15", "hub", "sd15", "sd15"),
        ("SD1.5", "hub", "sd15", "sd15"),
        ("sdxl", "hub", "sdxl", "sdxl"),
        ("sd2", "hub", "sd2", "sd2-v"),
        ("tiny-sd", "builtin", "sd15", "sd15"),
        ("tiny-sdxl", "builtin", "sdxl", "sdxl"),
        ("someone/my-sdxl-finetune", "hub", "sdxl", "sdxl"),
        ("https://example.invalid/models/realistic_v2-1.safetensors?download=1", "url", "sd2", "sd2-v"),
    ],
)
def test_forms(spec: str, kind: str, family: str, preset: str) -> None:
    base = resolve_base(spec)
    assert (base.kind, base.family, base.preset) == (kind, family, preset)


def test_shortcuts_name_a_single_file_checkpoint() -> None:
    base = resolve_base("sd15")
    assert base.filename and base.filename.endswith(".safetensors")
    assert 4e9 < base.bytes < 5e9


def test_local_file_counts_its_bytes(tmp_path: Path) -> None:
    model = tmp_path / "myModel.safetensors"
    model.write_bytes(b"x" * 1234)
    base = resolve_base(str(model))
    assert base.kind == "local" and base.bytes == 1234 and base.ref == str(model)
    assert not base.family_known  # the name says nothing; the runner detects it from the weights


def test_family_hint_wins(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    assert resolve_base(str(model), family_hint="sdxl").family == "sdxl"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("missing.safetensors", "not found"), ("notes.txt", "must be a .safetensors"), ("folder", "no model_index")],
)
def test_bad_local_paths(tmp_path: Path, name: str, fragment: str) -> None:
    if name == "notes.txt":
        (tmp_path / name).write_text("x")
    if name == "folder":
        (tmp_path / name).mkdir()
    with pytest.raises(ConfigError, match=fragment):
        resolve_base(str(tmp_path / name))


def test_nonsense_is_rejected_with_the_accepted_forms() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_base("not a model!")
    assert "sd15" in info.value.one_line() and "hub id" in info.value.one_line()
