"""--config FILE (YAML or JSON) for train, sweep and mix: flags override the file, every run writes
settings.json, which --config reruns as is; bad files are one-line errors naming the file and key."""

import json

import pytest

from mixjax.cli import _command_parser, build_parser, main
from mixjax.commands.config_file import apply_config
from tests.data_fixtures import prepared_letters

TINY = {"model": "tiny", "batch_size": 8, "seq_len": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_letters(tmp_path_factory.mktemp("config_data"), 40)


def parsed(command, config_text, suffix, tmp_path, *argv):
    """The namespace `mixjax COMMAND --config FILE ARGV` parses to (nothing runs)."""
    path = tmp_path / f"config{suffix}"
    path.write_text(config_text)
    parser = build_parser()
    apply_config(_command_parser(parser, command), str(path))
    return parser.parse_args([command, "--config", str(path), *argv])


def test_yaml_sections_set_the_flags_and_the_command_line_overrides_them(tmp_path):
    text = """
data: {data: D, weights: {a: 0.5, b: 0.25, c: 0.25}, budget-tokens: 5M}
model: {model: tiny, bf16: true, scan_layers: false}
optimizer: {lr: 2.0e-4, batch_size: 8}
checkpoint: {out: R, checkpoint_every: 4}
"""
    args = parsed("train", text, ".yaml", tmp_path, "--lr", "1e-3")
    assert (args.data, args.budget_tokens, args.out) == ("D", "5M", "R")
    assert args.weights == "a=0.5,b=0.25,c=0.25" and args.bf16 is True and args.scan_layers is False
    assert args.lr == 1e-3 and args.batch_size == 8 and args.checkpoint_every == 4  # the flag wins
    assert args.seq_len == 256  # not in the file: the flag's default


def test_method_options_in_a_json_file_for_mix(tmp_path):
    text = json.dumps({"method": {"method": "li2025", "adaptive": True, "max_runs": 9, "factors": [0.5, 2]},
                       "data": {"data": "D", "budget_tokens": 1000}, "out": "M"})
    args = parsed("mix", text, ".json", tmp_path)
    assert (args.method, args.adaptive, args.max_runs, args.factors) == ("li2025", True, 9, [0.5, 2.0])
    args = parsed("mix", json.dumps({"method": "li2025", "no_extra_runs": True, "data": "D",
                                     "budget_tokens": 1, "out": "M"}), ".json", tmp_path)
    assert args.no_extra_runs is False  # the flag stores False: "do not add runs"


@pytest.mark.slow
def test_train_writes_settings_json_and_reruns_it_as_is(data, tmp_path, capsys):
    run = tmp_path / "run"
    (tmp_path / "c.yaml").write_text(f"data: {{data: {data}, budget_tokens: 768}}\n"
                                     f"model: {{model: tiny}}\noptimizer: {{batch_size: 8, seq_len: 16}}\n"
                                     f"checkpoint: {{out: {run}}}\nexecution: {{quiet: true}}\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--weights", "a=0.5,b=0.25,c=0.25"]) == 0
    written = json.loads((run / "settings.json").read_text())
    assert written["data"] == {"data": str(data), "weights": "a=0.5,b=0.25,c=0.25", "budget_tokens": "768"}
    assert written["optimizer"]["batch_size"] == 8 and written["optimizer"]["lr"] == 1e-3
    assert written["model"]["compute_dtype"] == "auto"  # as given; what it became here is recorded
    assert written["recorded"] == {"backend": "cpu", "compute_dtype": "float32", "xla_flags": None}
    first = json.loads((run / "result.json").read_text())
    capsys.readouterr()
    assert main(["train", "--config", str(run / "settings.json")]) == 0  # the same run again, accepted
    again = json.loads((run / "result.json").read_text())
    assert again["val_loss"] == first["val_loss"] and again["weights"] == first["weights"] == {"a": 0.5, "b": 0.25,
                                                                                               "c": 0.25}
    assert "trained 6 steps" in capsys.readouterr().out
    # the same file with another setting is another run, which train refuses in that folder
    assert main(["train", "--config", str(run / "settings.json"), "--lr", "3e-3"]) == 2
    assert "lr" in capsys.readouterr().err


@pytest.mark.parametrize("text,suffix,message", [
    ("lr: [1, 2", ".yaml", "not valid YAML"),
    ("{", ".json", "not valid JSON"),
    ("[1, 2]", ".json", "expected an object of settings, got list"),
    ('{"nonsense": 1}', ".json", "nonsense: not a setting of this command"),
    ('{"model": {"lr": 1e-3}}', ".json", "model.lr: belongs in section 'optimizer', not 'model'"),
    ('{"batch_size": "eight"}', ".json", "batch_size: expected int, got 'eight'"),
    ('{"bf16": "yes"}', ".json", "bf16: expected true or false, got 'yes'"),
    ('{"schedule": "cosin"}', ".json", "schedule: 'cosin' is not one of cosine, linear, constant"),
    ('{"lr": 1, "optimizer": {"lr": 2}}', ".json", "'lr' is set twice"),
    ('{"method": "aioli"}', ".json", "method: not a setting of this command"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, text, suffix, message):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    rc = main(["train", "--config", str(path), "--data", "D", "--budget-tokens", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"--config {path}" in err and message in err, err
    assert not (tmp_path / "o").exists()


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["sweep", "--config", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixjax sweep: error: --config ") and "unreadable" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_run_folder_with_its_settings_is_not_taken_for_a_hugging_face_model(data, tmp_path):
    """settings.json, not config.json: --init RUN_DIR must still read the run's checkpoint."""
    from mixjax.model import is_hf_dir

    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--budget-tokens", "768", "--out", str(run), "--model", "tiny",
                 "--batch-size", "8", "--seq-len", "16", "--checkpoint-every", "6", "--quiet"]) == 0
    assert (run / "settings.json").is_file() and not is_hf_dir(run)


def test_train_config_sections_round_trip():
    from mixjax.train import TrainConfig

    cfg = TrainConfig(model="tiny", lr=3e-4, clip_norm=None, compute_dtype="bfloat16", mesh_shape=(1, 2, 1),
                      model_overrides={"remat": "full"}, keep_best=True, resume=False, progress=False)
    nested = cfg.sections()
    assert list(nested) == ["model", "optimizer", "eval", "checkpoint", "execution"]
    assert nested["optimizer"]["lr"] == 3e-4 and nested["model"]["model_overrides"] == {"remat": "full"}
    assert nested["execution"] == {"mesh_shape": (1, 2, 1), "progress": False}
    assert sum(map(len, nested.values())) == len(cfg.to_dict())
    assert TrainConfig.from_sections(nested) == cfg
    assert TrainConfig.from_sections(json.loads(json.dumps(TrainConfig().sections()))) == TrainConfig()
    assert TrainConfig.from_sections({"optimizer": {"lr": 0.5}}) == TrainConfig(lr=0.5)
    from mixjax.errors import MixjaxError
    with pytest.raises(MixjaxError, match="model.lr: belongs in section 'optimizer'"):
        TrainConfig.from_sections({"model": {"lr": 0.5}})
    with pytest.raises(MixjaxError, match="optimizer.nonsense: not a training setting"):
        TrainConfig.from_sections({"optimizer": {"nonsense": 1}})


@pytest.mark.parametrize("values,message", [
    ({"lr": float("nan")}, "`lr` must be a finite number > 0, got nan"),
    ({"max_epochs": 0}, "`max_epochs` must be a finite number > 0, got 0"),
    ({"clip_norm": -1.0}, "`clip_norm` must be a finite number >= 0, got -1.0"),
    ({"seq_len": 0}, "`seq_len` must be >= 1"),
    ({"eval_every": -1}, "`eval_every` must be >= 0 (0: at the end)"),
    ({"checkpoint_every": -2}, "`checkpoint_every` must be >= 0 (0: none)"),
    ({"mesh_shape": (2, -1, -1)}, "`mesh_shape` (2, -1, -1): sizes must be >= 1, with at most one -1 (the rest)"),
])
def test_train_config_refuses_a_bad_value_at_construction(values, message):
    """TrainConfig checks itself: a Python user hears of a bad value when making the config, in the
    words the command line shows with the setting's flag."""
    from mixjax.commands.flags import flag_name
    from mixjax.errors import MixjaxError
    from mixjax.train import TrainConfig

    with pytest.raises(MixjaxError) as caught:
        TrainConfig(**values)
    assert caught.value.args[0] == message
    setting = next(iter(values))
    shown = "--mesh" if setting == "mesh_shape" else "--" + setting.replace("_", "-")
    assert caught.value.render(flag_name) == message.replace(f"`{setting}`", shown)
    assert TrainConfig(clip_norm=None).clip_norm is None  # None: clipping off, not a bad number


def test_steps_for_counts_whole_batches():
    """The one rule from a budget to steps: whole batches of batch_size x seq_len, rounded down."""
    from mixjax.train import TrainConfig

    config = TrainConfig(batch_size=4, seq_len=32)
    assert [config.steps_for(b) for b in (127, 128, 1279, 1280, 1280.9)] == [0, 1, 9, 10, 10]
    assert config.run_steps(1280) == 10 and config.batch_tokens == 128


def test_flags_left_out_give_train_config_defaults():
    """Each default is TrainConfig's: the flags of train, sweep and mix, given nothing, make TrainConfig()."""
    from mixjax.commands.flags import train_config_from_args
    from mixjax.train import TrainConfig

    for argv in (["train"], ["sweep", "--method", "grid"], ["mix", "--method", "grid"]):
        args = build_parser().parse_args([*argv, "--data", "D", "--budget-tokens", "1", "--out", "O"])
        assert train_config_from_args(args) == TrainConfig(), argv
    args = build_parser().parse_args(["train", "--data", "D", "--budget-tokens", "1", "--out", "O", "--bf16",
                                      "--clip-norm", "0", "--mesh", "1,-1,1", "--quiet", "--no-resume",
                                      "--remat", "full", "--no-scan-layers"])
    assert train_config_from_args(args) == TrainConfig(
        compute_dtype="bfloat16", clip_norm=None, mesh_shape=(1, -1, 1), progress=False, resume=False,
        model_overrides={"remat": "full", "scan_layers": False})


def test_library_errors_name_settings_and_the_command_line_shows_flags():
    from mixjax.commands.flags import flag_name
    from mixjax.errors import MixjaxError, about

    e = MixjaxError("`loss_chunk` 5 must divide `seq_len` 32; or set `compute_dtype`, `out_dir`")
    assert str(e) == "loss_chunk 5 must divide seq_len 32; or set compute_dtype, out_dir"
    assert e.render(flag_name) == "--loss-chunk 5 must divide --seq-len 32; or set --compute-dtype, --out"
    assert e.setting == "loss_chunk" and MixjaxError("no setting").setting is None
    with pytest.raises(MixjaxError) as caught:
        with about("init"):
            raise MixjaxError("/x holds no mixjax checkpoint")
    assert str(caught.value) == "init: /x holds no mixjax checkpoint"
    assert caught.value.render(flag_name) == "--init: /x holds no mixjax checkpoint"


def test_the_readme_config_example_parses_as_a_whole_run(tmp_path):
    """The README's `--config` example, as written, sets every required setting of `train` (it
    lacked `out` and failed with "required: --out")."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = re.search(r"`(\{data: \{data: DIR.*?\})`", readme).group(1)
    args = parsed("train", example, ".yaml", tmp_path)
    assert (args.data, args.budget_tokens, args.out, args.init) == ("DIR", "5M", "RUN_DIR", "HF_DIR")
    assert args.lr == 2e-5 and args.bf16 is True
