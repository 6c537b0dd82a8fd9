"""One rule for every kohya key: the table agrees with TrainConfig and with docs/kohya-keys.md; no-op keys are
accepted only where they change nothing and reported; refused keys and bad network_args name themselves; the
GUI-shaped corpus in tests/support/fixtures/kohya passes `config check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpurun import kohya_keys, network_args
from gpurun.errors import ConfigError
from gpurun.trainconfig import ALIASES, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
CORPUS = sorted((ROOT / "tests" / "support" / "fixtures" / "kohya").glob("*.toml"))


def load(tmp_path: Path, text: str) -> TrainConfig:
    path = tmp_path / "training_config.toml"
    path.write_text(text)
    return TrainConfig.from_toml(path)


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.one_line()


def test_the_doc_is_generated_from_the_table() -> None:
    assert (ROOT / "docs" / "kohya-keys.md").read_text(encoding="utf-8") == kohya_keys.markdown()


def test_every_field_has_a_rule_and_every_implemented_key_a_field() -> None:
    fields = set(TrainConfig.model_fields)
    kohya_names = {ALIASES.get(name, name) for name in kohya_keys.KEYS}
    assert fields - kohya_names == set()
    implemented = {ALIASES.get(k, k) for k, e in kohya_keys.KEYS.items() if e.status in ("implemented", "gpurun")}
    assert implemented - fields == set()
    # a field that is not "implemented" must be one that only accepts its no-op values
    rule = {ALIASES.get(k, k): e.status for k, e in kohya_keys.KEYS.items()}
    assert {k for k in fields if rule[k] not in ("implemented", "gpurun")} == {"max_token_length"}


def test_every_refusal_says_why() -> None:
    for name, entry in kohya_keys.KEYS.items():
        assert entry.note or entry.status == "no-op at", name
        if entry.status in ("refused", "no-op at"):
            assert kohya_keys.refusal(name), name
    tally = kohya_keys.counts()
    assert sum(tally.values()) == len(kohya_keys.KEYS) and tally["implemented"] > 50 and tally["refused"] > 20


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("caption_tag_dropout_rate = 0.0", "no effect at 0.0"),
        ("lr_scheduler_args = []", "no effect at []"),
        ("epoch = 10", "sd-scripts does not read"),
        ('noise_offset_type = "Multires"', 'no effect at "Multires"'),
        ('wandb_run_name = "x"', "nothing is sent"),
        ("save_last_n_steps = 0", "no effect at 0"),
        ("save_last_n_epochs_state = 1", "no effect at 1: gpurun keeps one resumable state, the latest"),
    ],
)
def test_no_op_keys_are_accepted_and_reported(tmp_path: Path, line: str, said: str) -> None:
    config = load(tmp_path, f"{line}\nnetwork_dim = 4\n")
    key = line.split(" ")[0]
    assert said in config.kohya_notes()[key]
    assert key not in config.model_dump()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("prior_loss_weight = -1", "[dataset].prior_loss_weight"),
        ('dataset_config = "./nowhere.toml"', "nowhere.toml: dataset config file not found"),
        ("sample_every_n_steps = 100", "sample_every_n_steps = 100 is refused: step-based sampling is not implemented"),
        ("max_token_length = 225", "only the standard 75-token prompt length"),
        ("network_dropout = 1.0", "[training].network_dropout"),
        ("lr_decay_steps = 10", "lr_decay_steps = 10 is refused: use lr_scheduler's names"),
        ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=glora"]', "network_args algo=glora: GLoRA is not"),
        ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "use_tucker=0"]', "use_tucker='0' must be"),
        ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "rank_dropout=1.5"]', "rank_dropout=1.5"),
        ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "fancy=1"]', "'fancy' is not an argument of"),
        ('network_module = "lycoris.kohya"\nnetwork_args = ["preset=attn-only"]', "preset=attn-only: it targets"),
        ('network_module = "lycoris.kohya"\nnetwork_args = ["preset=my.toml"]', "not a built-in LyCORIS preset"),
        ('network_module = "lycoris.kohya"\nnetwork_dropout = 0.1', "network_dropout is not read by lycoris.kohya"),
        ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=ia3"]', "network_args algo=ia3: iA3 files"),
        (
            'network_module = "networks.lora"\nnetwork_args = ["algo=loha"]',
            "'algo' is not an argument of networks.lora",
        ),
        ('network_module = "networks.loha"', "network_module 'networks.loha' is not supported"),
        ('network_module = "networks.dylora"', "network_module 'networks.dylora' is not supported"),
        ('network_args = ["conv_dim=big"]', "network_args conv_dim='big' is not a whole number"),
        ('network_args = ["conv_dim=8", "algo=loha"]', "network_args 'algo' is not an argument of networks.lora"),
        ('network_args = ["rank_dropout=0.1"]', "network_args rank_dropout=0.1: LoRA rank dropout is not implemented"),
        ('network_args = ["conv_alpha=4"]', "conv_alpha needs conv_dim"),
        ('network_args = ["conv_dim"]', "is not key=value"),
        ("text_encoder_lr = [1e-5, 2e-5, 3e-5]", "one per text encoder"),
        ("lr_warmup_steps = 1.5", "fraction of the run's steps"),
        ("enable_bucket = true\nbucket_reso_steps = 1", "must be a multiple of 8 with enable_bucket"),
        ('lr_scheduler = "adafactor"', "lr_scheduler adafactor is Adafactor's own schedule"),
        ("adaptive_noise_scale = 0.01", "adaptive_noise_scale requires noise_offset"),
        (
            'optimizer_type = "prodigy"\nlearning_rate = 1.0\ntext_encoder_lr = [1.0, 0.5]',
            "Prodigy needs one learning rate",
        ),
        ("min_timestep = 500\nmax_timestep = 400", "min_timestep (500) is larger than max_timestep (400)"),
        ('loss_type = "l3"', "[training].loss_type"),
        ("totally_unknown_key = 1", "unknown key 'totally_unknown_key'"),
        ("save_last_n_steps_state = 3", "gpurun keeps exactly one resumable state, the latest"),
    ],
)
def test_refusals_name_the_key_and_the_reason(tmp_path: Path, text: str, said: str) -> None:
    assert said in refusal(tmp_path, text + "\n")


def test_kohya_value_forms(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'resolution = "512,640"\nenable_bucket = true\noptimizer_type = "adamW8BIT"\nlr_warmup_steps = 0.1\n'
        "text_encoder_lr = [5e-5]\n",
    )
    assert config.resolution == (512, 640) and config.optimizer_type == "AdamW8bit"
    assert config.warmup_steps(95) == 9  # kohya: int(0.1 * 95)
    assert config.text_encoder_lrs(1) == [5e-5] and config.text_encoder_lrs(2) == [5e-5, 5e-5]
    assert load(tmp_path, "bucket_reso_steps = 1\n").bucket_reso_steps == 1  # unused without buckets
    assert load(tmp_path, 'resolution = "512,650"\nenable_bucket = true\n').resolution == (512, 650)
    unbucketed = load(tmp_path, 'resolution = "512,650"\n')  # the EDG preset's shape: kohya crops to 512x650
    assert "cover 512x648; samples render at that size" in unbucketed.kohya_notes()["resolution"]
    pair = load(tmp_path, "text_encoder_lr = [5e-5, 1e-5]\n")
    assert (
        pair.text_encoder_lrs(2) == [5e-5, 1e-5]
        and "kohya's networks.lora would" in pair.kohya_notes()["text_encoder_lr"]
    )
    with pytest.raises(ConfigError, match="this model has 1 text encoder"):
        pair.text_encoder_lrs(1)
    assert load(tmp_path, "text_encoder_lr = [5e-5, 5e-5]\n").text_encoder_lrs(1) == [5e-5]  # the GUI's SD 1.5 form
    unet_only = load(tmp_path, "text_encoder_lr = [5e-5, 1e-5]\nnetwork_train_unet_only = true\n")
    assert unet_only.text_encoder_lrs(2) == [0.0, 0.0] and not unet_only.trains_text_encoder


def test_network_args_parse_as_kohya_reads_them() -> None:
    assert network_args.parse_network_args([]) == network_args.NetworkArgs()
    locon = network_args.parse_network_args(["conv_dim=8"])
    assert (locon.conv_dim, locon.conv_alpha, locon.is_locon) == (8, 1.0, True)  # kohya: conv_alpha defaults to 1
    assert network_args.parse_network_args(['conv_dim="16"', "conv_alpha=0.5"]).metadata() == {
        "conv_dim": "16",
        "conv_alpha": "0.5",
    }
    assert network_args.parse_network_args(["conv_dim=0", "conv_alpha=1"]).metadata() == {}  # rank 0: no conv modules
    assert network_args.parse_network_args(["rank_dropout=0", "module_dropout=0.0"]).metadata() == {}
    with pytest.raises(network_args.NetworkArgsError, match="twice"):
        network_args.parse_network_args(["conv_dim=8", "conv_dim=4"])
    with pytest.raises(network_args.NetworkArgsError, match="conv_alpha=-1 must be positive"):
        network_args.parse_network_args(["conv_dim=8", "conv_alpha=-1"])


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_the_gui_corpus_passes_config_check(path: Path, gpurun_cli) -> None:
    result = gpurun_cli("config", "check", str(path), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["config"]["network_module"] in ("networks.lora", "lycoris.kohya")
    assert all(isinstance(v, str) and v for v in doc["notes"].values())


def test_the_corpus_covers_the_shapes() -> None:
    configs = {p.stem: TrainConfig.from_toml(p) for p in CORPUS}
    assert configs["locon-sd15"].network.is_locon
    assert (
        configs["adafactor-sdxl"].optimizer_type == "Adafactor"
        and configs["adafactor-sdxl"].lr_scheduler == "adafactor"
    )
    assert configs["multires-sd15"].multires_noise_iterations == 6 and configs["multires-sd15"].loss_type == "huber"
    assert configs["per-encoder-lr-sdxl"].text_encoder_lrs(2) == [5e-5, 1e-5]
    assert configs["lora-sd15"].resolution == (512, 650) and not configs["lora-sd15"].enable_bucket
    assert configs["lora-sd15"].training_comment == "trigger: sks"
    dataset = configs["dataset-config-sd15"]
    assert dataset.dataset_config and (dataset.batch_size, dataset.enable_bucket) == (2, True)  # from the dataset TOML
    assert dataset.prior_loss_weight == 0.8 and configs["reg-sd15"].reg_data_dir
    continued = configs["continue-sd15"]  # dim_from_weights: the file's rank 8 and alpha 4, not network_alpha 1
    assert continued.network_weights and (continued.network_dim, continued.network_alpha) == (8, 4.0)
    lycoris = {name: c.lycoris for name, c in configs.items() if c.lycoris is not None}
    assert {(n, a.algo) for n, a in lycoris.items()} == {
        ("loha-sd15", "loha"),
        ("lokr-sdxl", "lokr"),
        ("dora-sd15", "locon"),
        ("diag-oft-sd15", "diag-oft"),
    }
    assert lycoris["dora-sd15"].kwargs["dora_wd"] == "True" and lycoris["lokr-sdxl"].kwargs["factor"] == "8"
    assert "rank_dropout_scale" not in lycoris["loha-sd15"].metadata()  # lycoris.kohya never reads it
    assert configs["dadapt-sd15"].optimizer_type == "DAdaptAdam" and configs["lion-sd15"].optimizer_type == "Lion"


def test_config_keys_and_check_speak_the_rules(tmp_path: Path, gpurun_cli) -> None:
    listing = json.loads(gpurun_cli("config", "keys", "--json").stdout)
    assert listing["counts"] == kohya_keys.counts()
    assert listing["kohya"]["caption_tag_dropout_rate"] == {
        "status": "no-op at",
        "note": kohya_keys.KEYS["caption_tag_dropout_rate"].note,
        "accepted_as": [0, 0.0],
    }
    path = tmp_path / "gui.toml"
    path.write_text('caption_tag_dropout_rate = 0\nepoch = 3\nnetwork_args = ["conv_dim=4"]\n')
    checked = gpurun_cli("config", "check", str(path))
    assert checked.returncode == 0
    assert (
        "caption_tag_dropout_rate: no effect at 0" in checked.stderr and "epoch: kohya_ss GUI field" in checked.stderr
    )
    path.write_text("stop_text_encoder_training = 5\n")
    refused = gpurun_cli("config", "check", str(path))
    assert refused.returncode == 1 and "stop_text_encoder_training" in refused.stderr and "part-way" in refused.stderr
