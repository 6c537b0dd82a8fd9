"""kohya's dataset config TOML: strict validation naming the file and the field, kohya's precedence (subset >
dataset > [general] > the training config > kohya's default), what the training config takes from it, and the
resolved copy the box reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from gpurun.kohya_dataset import CaptionRules, canonical_toml, load_dataset_config
from gpurun.trainconfig import TrainConfig, dataset_fallback


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_dataset_config(write(tmp_path, text))
    return info.value.one_line()


ONE = '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\n'


def test_precedence_is_kohyas(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[general]\nnum_repeats = 3\nkeep_tokens = 2\nflip_aug = true\nclass_tokens = "general"\n'
        "[[datasets]]\nkeep_tokens = 1\nresolution = [512, 768]\n"
        '[[datasets.subsets]]\nimage_dir = "a"\nnum_repeats = 7\n'
        '[[datasets.subsets]]\nimage_dir = "/abs/b"\nflip_aug = false\nclass_tokens = "b"\nis_reg = true\n',
    )
    config = load_dataset_config(path)
    fallback = {"caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 9, "batch_size": 4}
    first, second = config.resolved(fallback)
    assert first.image_dir == tmp_path / "a" and second.image_dir == Path("/abs/b")  # relative to the file
    assert (first.num_repeats, second.num_repeats) == (7, 3)  # subset, else [general]
    assert first.rules == CaptionRules(shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.0, flip_aug=True)
    assert second.rules.flip_aug is False and second.is_reg and not first.is_reg
    assert (first.class_tokens, second.class_tokens) == ("general", "b")
    assert first.caption_extension == ".txt"  # the training config's, when no table gives one
    assert config.settings(fallback) == {"resolution": (512, 768), "batch_size": 4}
    bare = load_dataset_config(write(tmp_path, ONE)).resolved({})[0]
    # kohya's own defaults when nobody gives a value
    assert (bare.num_repeats, bare.caption_extension, bare.class_tokens, bare.rules) == (
        1,
        ".caption",
        "",
        CaptionRules(),
    )


def test_the_training_config_takes_the_dataset_settings(tmp_path: Path) -> None:
    write(tmp_path, "[general]\nbatch_size = 3\n[[datasets]]\nresolution = 640\nenable_bucket = true\n" + ONE[13:])
    (tmp_path / "config.toml").write_text(
        'dataset_config = "dataset.toml"\ntrain_batch_size = 1\nresolution = 512\nmin_bucket_reso = 128\n'
        'train_data_dir = "./ignored"\nreg_data_dir = "./ignored"\n'
    )
    config = TrainConfig.from_toml(tmp_path / "config.toml")
    assert (config.batch_size, config.resolution, config.enable_bucket) == (3, (640, 640), True)
    assert config.min_bucket_reso == 128  # not in the dataset config: the training config's
    assert config.dataset_config == str(tmp_path / "dataset.toml")
    assert config.train_data_dir is None and config.reg_data_dir is None  # kohya ignores them too
    notes = config.kohya_notes()
    assert "dataset_config names the images" in notes["train_data_dir"] and "1 subset(s)" in notes["dataset_config"]


def test_the_box_copy_resolves_to_the_same_subsets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[general]\nshuffle_caption = true\n[[datasets]]\nresolution = [512, 640]\nbatch_size = 2\n"
        '[[datasets.subsets]]\nimage_dir = "a"\nclass_tokens = "sks \\"x\\""\nnum_repeats = 4\n'
        '[[datasets.subsets]]\nimage_dir = "b"\nis_reg = true\ncaption_extension = "caption"\n',
    )
    original = load_dataset_config(path)
    (tmp_path / "config.toml").write_text('dataset_config = "dataset.toml"\nkeep_tokens = 1\n')
    fallback = dataset_fallback(TrainConfig.from_toml(tmp_path / "config.toml").model_dump())
    box = tmp_path / "box"
    box.mkdir()
    (box / "dataset.toml").write_text(canonical_toml(original, fallback, ["subsets/0", "subsets/1"]))
    copy = load_dataset_config(box / "dataset.toml")
    assert copy.settings({}) == original.settings(fallback)
    for mine, theirs, folder in zip(original.resolved(fallback), copy.resolved({}), ["0", "1"], strict=True):
        assert theirs.image_dir == box / "subsets" / folder
        assert (theirs.num_repeats, theirs.class_tokens, theirs.caption_extension, theirs.is_reg, theirs.rules) == (
            mine.num_repeats,
            mine.class_tokens,
            mine.caption_extension,
            mine.is_reg,
            mine.rules,
        )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[general]\nnum_repeat = 3\n" + ONE, "dataset.toml: general.num_repeat: unknown key 'num_repeat'"),
        (ONE + "num_repeats = 0\n", "datasets[0].subsets[0].num_repeats: Input should be greater than or equal to 1"),
        (ONE + "color_aug = true\n", "color_aug = true is refused: colour augmentation is not implemented"),
        (ONE + 'caption_prefix = "sks, "\n', 'caption_prefix = "sks, " is refused: caption_prefix is not implemented'),
        (ONE + 'metadata_file = "m.json"\n', "fine-tuning datasets (metadata_file) are not implemented"),
        ("[[datasets]]\nis_reg = true\n" + ONE[13:], "datasets[0].is_reg: unknown key 'is_reg'"),
        ("[[datasets]]\nprior_loss_weight = 0.5\n" + ONE[13:], "unknown key 'prior_loss_weight'"),
        ("[[datasets]]\nresolution = 32\n" + ONE[13:], "datasets[0].resolution: each side must be from 64"),
        ("[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n", "datasets[0].subsets[0].image_dir: Field required"),
        ("[general]\nbatch_size = 2\n", "datasets: Field required"),
        (ONE + ONE, "gpurun trains one [[datasets]]"),
        (ONE + "caption_dropout_rate = 1.5\n", "caption_dropout_rate: Input should be less than or equal to 1"),
        ("[[datasets\n", "not valid TOML"),
    ],
)
def test_mistakes_name_the_file_and_the_field(tmp_path: Path, text: str, said: str) -> None:
    assert said in error(tmp_path, text)


def test_no_effect_values_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path, ONE + 'color_aug = false\ncaption_separator = ","\ncache_info = true\ntoken_warmup_step = 0\n'
    )
    assert load_dataset_config(path).resolved({})[0].image_dir == tmp_path / "a"


def test_a_missing_dataset_config_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('dataset_config = "nowhere.toml"\n')
    with pytest.raises(ConfigError, match="dataset config file not found"):
        TrainConfig.from_toml(tmp_path / "config.toml")
