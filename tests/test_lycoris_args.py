"""lycoris.kohya's network_args as gpurun reads them: the kohya_ss GUI's lines pass (its repeated use_tucker
included), lycoris' lenient readings are made strict (a boolean is True or False, numbers are numbers), older
spellings map as lycoris maps them, and ss_network_args holds exactly what lycoris was given."""

from __future__ import annotations

import pytest

from gpurun.lycoris_args import parse_lycoris_args
from gpurun.network_args import NetworkArgsError

GUI_LOKR = [
    "preset=full",
    "conv_dim=16",
    "conv_alpha=1",
    "use_tucker=False",
    "rank_dropout=0",
    "bypass_mode=False",
    "dora_wd=False",
    "module_dropout=0",
    "factor=-1",
    "use_cp=False",
    "use_scalar=False",
    "decompose_both=False",
    "rank_dropout_scale=False",
    "algo=lokr",
    "train_norm=False",
]


def test_the_guis_lokr_line() -> None:
    args = parse_lycoris_args(GUI_LOKR)
    assert (args.algo, args.preset, args.conv_dim(32), args.conv_alpha(16.0), args.trains_conv) == (
        "lokr",
        "full",
        16,
        1.0,
        True,
    )
    assert args.metadata()["factor"] == "-1" and args.metadata()["use_tucker"] == "False"
    assert "rank_dropout_scale" in args.no_effect and "rank_dropout_scale" not in args.metadata()


def test_defaults_are_lycoris_defaults() -> None:
    args = parse_lycoris_args([])
    assert (args.algo, args.preset, args.kwargs) == ("lora", "full", {})
    assert args.conv_dim(8) == 8 and args.conv_alpha(4.0) == 4.0  # absent: the linear ones, as lycoris reads them
    assert not parse_lycoris_args(["conv_dim=0"]).trains_conv  # the string "0" turns convolutions off
    assert not parse_lycoris_args(["preset=attn-mlp"]).trains_conv


def test_older_spellings_map_as_lycoris_maps_them() -> None:
    assert parse_lycoris_args(["use_cp=True"]).kwargs == {"use_tucker": "True"}
    assert parse_lycoris_args(["disable_conv_cp=True"]).kwargs == {"use_tucker": "False"}
    assert parse_lycoris_args(["constrain=0.5", "algo=diag-oft"]).kwargs == {"constraint": "0.5"}
    assert parse_lycoris_args(["algo=LoHa", 'preset="full"']).algo == "loha"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["use_tucker=True", "use_tucker=False"], "gives use_tucker twice ('True' and 'False')"),
        (["use_tucker=True", "use_cp=False"], "use_tucker and its older spellings"),
        (["train_norm=1"], "train_norm='1' must be True or False"),
        (["dora_wd=yes"], "dora_wd='yes' must be True or False"),
        (["factor=0"], "factor=0 must be -1 (automatic) or a positive number"),
        (["factor=2.5"], "factor='2.5' is not a whole number"),
        (["module_dropout=1"], "module_dropout=1 must be from 0 to below 1"),
        (["conv_alpha=0"], "conv_alpha=0 must be positive"),
        (["conv_dim=lots"], "conv_dim='lots' is not a whole number"),
        (["algo=diag-oft", "dora_wd=True"], "DoRA applies to locon, loha and lokr"),
        (["algo=tlora"], "T-LoRA is not implemented"),
        (["algo=magic"], "algo='magic' is not a LyCORIS algorithm"),
        (["preset=./my-preset.toml"], "not a built-in LyCORIS preset"),
        (["loraplus_lr_ratio=16"], "LoRA+ is not implemented"),
        (["block_dims=2,2"], "'block_dims' is not an argument of lycoris.kohya"),
        (["conv_dim"], "is not key=value"),
    ],
)
def test_nonsense_is_refused_by_name(args: list[str], said: str) -> None:
    with pytest.raises(NetworkArgsError) as info:
        parse_lycoris_args(args)
    assert said in str(info.value)
