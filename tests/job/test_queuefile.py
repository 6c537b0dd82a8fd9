"""The queue file (`--queue jobs.toml`) and several datasets on the command line: defaults, names, relative paths,
and every mistake refused with the file, the job and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from gpurun.job.queuefile import MAX_JOBS, jobs_from_datasets, load_queue


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    return path


def test_defaults_apply_unless_a_job_says_otherwise_and_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[defaults]
base = "sd15"
config = "shared.toml"
epochs = 4

[[job]]
dataset = "robots"

[[job]]
dataset = "/data/cats"
name = "cat-v2"
base = "sdxl"
config = "cats.toml"
epochs = 8
repeats = 3
trigger = "sks cat"
""",
    )
    robot, cat = load_queue(path)
    assert (robot.name, robot.dataset, robot.base, robot.config, robot.epochs) == (
        "robots", tmp_path / "robots", "sd15", tmp_path / "shared.toml", 4
    )  # fmt: skip
    assert (cat.name, cat.dataset, cat.base, cat.config, cat.epochs, cat.repeats, cat.trigger) == (
        "cat-v2", Path("/data/cats"), "sdxl", tmp_path / "cats.toml", 8, 3, "sks cat"
    )  # fmt: skip


def test_unnamed_jobs_of_the_same_folder_name_get_numbered(tmp_path: Path) -> None:
    jobs = jobs_from_datasets([tmp_path / "a" / "data", tmp_path / "b" / "data", tmp_path / "c"])
    assert [j.name for j in jobs] == ["data", "data-2", "c"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[job]]\ndataset = 'a'\nepoch = 3\n", "job.0.epoch: Extra inputs are not permitted"),
        ("[[job]]\nname = 'x'\n", "job.0.dataset: Field required"),
        ("[defaults]\nbase = 'sd15'\n", "job: Field required"),
        ("job = []\n", "job: List should have at least 1 item"),
        ("[[job]]\ndataset = 'a'\nepochs = 0\n", "job.0.epochs: Input should be greater than or equal to 1"),
        (
            "[[job]]\ndataset = 'a'\nname = 'x'\n[[job]]\ndataset = 'b'\nname = 'x'\n",
            "job 2: the name 'x' is used twice",
        ),
        ("[[job]]\ndataset = 'a'\nname = '../up'\n", "job 1: its name becomes its output folder, and it holds a path"),
        ("[[job]]\ndataset = 'a'\nname = '.hidden'\n", "it starts with a dot"),
        ("[[job]\ndataset = 'a'\n", "not valid TOML"),
        ("[[job]]\ndataset = 'a'\n[surprise]\nx = 1\n", "surprise: Extra inputs are not permitted"),
    ],
)
def test_mistakes_are_refused_naming_the_file_and_the_field(tmp_path: Path, text: str, says: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_queue(path)
    assert says in caught.value.message and caught.value.where == str(path)


def test_a_missing_file_and_too_many_jobs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="queue file not found"):
        load_queue(tmp_path / "nope.toml")
    path = _write(tmp_path, "".join(f"[[job]]\ndataset = 'd{i}'\n" for i in range(MAX_JOBS + 1)))
    with pytest.raises(ConfigError, match="at most 100 items"):
        load_queue(path)
