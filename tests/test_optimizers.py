"""kohya's optimizers by name: every optimizer_type gpurun lists builds the class kohya builds, takes only
arguments that class has, and a nonsense or ill-typed optimizer_args entry is refused naming it, before renting."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from gpurun import optimizers
from gpurun.errors import ConfigError
from gpurun.trainconfig import TrainConfig, tomllib


def load(tmp_path: Path, text: str) -> TrainConfig:
    path = tmp_path / "training_config.toml"
    path.write_text(text)
    return TrainConfig.from_toml(path)


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.one_line()


@pytest.mark.parametrize("spec", list(optimizers.OPTIMIZERS.values()), ids=lambda s: s.name)
def test_the_table_is_the_installed_classes(spec: optimizers.Optimizer) -> None:
    """The class path is kohya's ss_optimizer name (module + class) and every listed argument is a keyword of the
    installed class: a name the class lacks would pass config check and fail on the box."""
    pytest.importorskip("torch")
    module, _, name = spec.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert f"{cls.__module__}.{cls.__name__}" == spec.class_path
    assert set(spec.args) <= set(inspect.signature(cls).parameters) - {"params", "lr"}


def test_names_are_kohyas_in_any_case() -> None:
    assert optimizers.optimizer("dadaptadam").name == "DAdaptAdam"
    assert optimizers.optimizer("LION").name == "Lion"
    assert optimizers.optimizer("").name == "AdamW"  # kohya's default for an empty optimizer_type
    assert optimizers.optimizer("DAdaptation").class_path.endswith("DAdaptAdamPreprint")
    with pytest.raises(optimizers.OptimizerArgsError, match=r"PagedAdamW8bit.*not available"):
        optimizers.optimizer("PagedAdamW8bit")


def test_arguments_are_parsed_as_kohya_and_checked() -> None:
    assert optimizers.check_optimizer_args("DAdaptAdam", ["decouple=True", "weight_decay=0.1", "betas=0.9,0.91"]) == {
        "decouple": True,
        "weight_decay": 0.1,
        "betas": (0.9, 0.91),
    }
    assert optimizers.check_optimizer_args("Adafactor", ["relative_step=false"]) == {"relative_step": False}


@pytest.mark.parametrize(
    ("name", "args", "said"),
    [
        ("Lion", ["decouple=True"], "optimizer_args 'decouple' is not an argument of Lion; it takes"),
        ("DAdaptAdam", ["weight_decay=lots"], "optimizer_args weight_decay='lots' for DAdaptAdam must be a finite"),
        ("DAdaptAdan", ["betas=0.9,0.99"], "must be 3 numbers"),
        ("AdamW", ["lr=1e-4"], "optimizer_args lr is not taken: use learning_rate"),
        ("Lion8bit", ["min_8bit_size=4096.5"], "must be a whole number"),
        ("Prodigy", ["decouple=1"], "must be True or False"),
        ("AdamW", ["weight_decay=0.1", "weight_decay=0.2"], "gives weight_decay twice"),
        ("AdamW", ["weight_decay"], "is not key=value"),
    ],
)
def test_nonsense_arguments_are_refused_by_name(name: str, args: list[str], said: str) -> None:
    with pytest.raises(optimizers.OptimizerArgsError) as info:
        optimizers.check_optimizer_args(name, args)
    assert said in str(info.value)


def test_config_check_refuses_a_bad_argument_naming_the_field(tmp_path: Path) -> None:
    line = refusal(tmp_path, 'optimizer_type = "Lion"\noptimizer_args = ["eps=1e-8"]\n')
    assert "[training].optimizer_args: optimizer_args 'eps' is not an argument of Lion; it takes betas" in line


@pytest.mark.parametrize("name", ["DAdaptAdam", "DAdaptation", "DAdaptLion", "DAdaptAdaGrad", "Prodigy"])
def test_adaptive_optimizers_need_one_learning_rate(tmp_path: Path, name: str) -> None:
    line = refusal(tmp_path, f'optimizer_type = "{name}"\nlearning_rate = 1.0\ntext_encoder_lr = 0.5\n')
    assert f"optimizer_type {name} needs one learning rate" in line
    # a frozen encoder (0) is fine, and so is one rate for all
    assert load(tmp_path, f'optimizer_type = "{name}"\nlearning_rate = 1.0\ntext_encoder_lr = 0\n')
    assert load(tmp_path, f'optimizer_type = "{name}"\nlearning_rate = 1.0\n').optimizer_type == name


def test_a_low_rate_for_an_adaptive_optimizer_is_said_as_kohya_warns(tmp_path: Path) -> None:
    config = load(tmp_path, 'optimizer_type = "dadaptadam"\nlearning_rate = 1e-4\n')
    assert "kohya warns below 0.1 and recommends 1.0" in config.kohya_notes()["optimizer_type"]
    assert "optimizer_type" not in load(tmp_path, 'optimizer_type = "dadaptadam"\nlearning_rate = 1.0\n').kohya_notes()


def test_kohyas_old_switches_pick_the_optimizer(tmp_path: Path) -> None:
    assert load(tmp_path, "use_lion_optimizer = true\n").optimizer_type == "Lion"
    assert load(tmp_path, 'use_lion_optimizer = true\noptimizer_type = ""\n').optimizer_type == "Lion"
    assert load(tmp_path, "use_8bit_adam = true\n").optimizer_type == "AdamW8bit"
    assert load(tmp_path, "use_lion_optimizer = false\n").optimizer_type == "AdamW"
    assert "use_lion_optimizer picks Lion, and optimizer_type is 'AdamW'" in refusal(
        tmp_path, 'use_lion_optimizer = true\noptimizer_type = "AdamW"\n'
    )
    # the written config reads back the same
    config = load(tmp_path, "use_lion_optimizer = true\n")
    again = TrainConfig.from_mapping(tomllib.loads(config.to_toml()))
    assert again.optimizer_type == "Lion"
