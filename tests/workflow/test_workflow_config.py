"""The one configuration: defaults file, key=value parser, value checks, and the CLI's one-line errors."""

from __future__ import annotations

import pytest

import grukit
from grukit.cli import main
from grukit.errors import ConfigError
from grukit.workflow.config import RULES, check_value, defaults, defaults_text, parse_args, resolve


def test_every_default_has_a_rule_and_is_valid():
    values = defaults()
    assert set(values) == set(RULES)
    for key, value in values.items():
        assert check_value(key, value) == value, key
    for key in (
        "task",
        "mode",
        "data",
        "model",
        "epochs",
        "batch",
        "lr",
        "hidden",
        "layers",
        "device",
        "name",
        "resume",
        "seed",
        "patience",
        "clip",
        "horizon",
        "lookback",
        "quantiles",
    ):
        assert key in values


def test_parse_args_types():
    got = parse_args(["epochs=3", "lr=0.01", "resume=True", "target=a,b", "quantiles=0.9,0.5,0.1", "device=cuda:1"])
    assert got == {
        "epochs": 3,
        "lr": 0.01,
        "resume": True,
        "target": ["a", "b"],
        "quantiles": [0.1, 0.5, 0.9],
        "device": "cuda:1",
    }
    assert parse_args(["past="]) == {"past": []}
    assert resolve({"hidden": 16})["hidden"] == 16 and resolve()["hidden"] == defaults()["hidden"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["epoch=3"], "unknown key 'epoch' (did you mean 'epochs'?)"),
        (["hiden=8"], "unknown key 'hiden' (did you mean 'hidden'?)"),
        (["lookbak=96"], "unknown key 'lookbak' (did you mean 'lookback'?)"),
        (["epochs=three"], "bad value for epochs: 'three' is not a positive integer"),
        (["hidden=0"], "bad value for hidden: 0 is not a positive integer"),
        (["seed=-1"], "bad value for seed: -1 is not an integer >= 0"),
        (["lr=-1"], "bad value for lr: -1.0 is not a number >= 0"),
        (["resume=maybe"], "bad value for resume: 'maybe' is not true or false"),
        (["quantiles=0.1,0.9"], "bad value for quantiles"),
        (["format=onx"], "bad value for format: 'onx' is not one of onnx, torchscript (did you mean 'onnx'?)"),
        (["device=gpu"], "bad value for device: 'gpu' is not auto, cpu, cuda or cuda:N"),
        (["name=a/b"], "bad value for name"),
        (["epochs"], "key 'epochs' needs a value, e.g. epochs="),
        (["epochs=1", "epochs=2"], "key 'epochs' given twice"),
    ],
)
def test_parse_errors_name_the_key(args, message):
    with pytest.raises(ConfigError) as err:
        parse_args(args)
    assert message in str(err.value)


def test_python_api_checks_keys_and_values():
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        grukit.Model("forecast", epoch=3)
    with pytest.raises(ConfigError, match="bad value for hidden"):
        grukit.Model("forecast", hidden=2.5)
    with pytest.raises(ConfigError, match="bad value for beam: 0 is not a positive integer"):
        grukit.Model("seq2seq", beam=0)


def test_cfg_prints_the_defaults_file(capsys):
    assert main(["cfg"]) == 0
    out = capsys.readouterr().out
    assert out == defaults_text() and "epochs = " in out and "quantiles = " in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["forecast", "train", "epoch=3"], "grukit: unknown key 'epoch' (did you mean 'epochs'?)"),
        (["forecast", "trian"], "grukit: unknown mode 'trian' (did you mean 'train'?)"),
        (["forecast"], "grukit: forecast: give a mode first"),
        (["forcast", "train"], "grukit: unknown command 'forcast' (did you mean 'forecast'?)"),
        (["seq2seq", "predict", "beam=0"], "grukit: bad value for beam: 0 is not a positive integer"),
        (["seq2seq", "train", "columns=src,tgt"], "grukit: bundled dataset 'dates' has no source column 'src'"),
        (["forecast", "compare", "models=gru,lstn"], "grukit: bad value for models: unknown architecture 'lstn' (did"),
        (["forecast", "train", "model=gur"], "grukit: bad value for model: unknown architecture 'gur' (did you mean"),
        (["forecast", "train", "data=nope.csv"], "grukit: data 'nope.csv' is not a file nor a bundled dataset"),
        (["forecast", "train", "data=elecdemnd"], "(did you mean 'elecdemand'?)"),
        (["forecast", "train", "target=demnd"], "has no target column 'demnd' (did you mean 'demand'?)"),
        (["forecast", "train", "lookback=100"], "lookback: 100 is not a multiple of season 48; use 96 or 144"),
        (["forecast", "val", "model=missing.safetensors"], "checkpoint 'missing.safetensors' not found"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs" / "forecast" / "train").exists()  # nothing written for a rejected command


def test_a_config_saved_before_a_key_existed_gets_its_default():
    old = {k: v for k, v in defaults("classify").items() if k not in ("beam", "devices")}
    config = resolve({"epochs": 3}, base=old)
    assert config["beam"] == defaults("classify")["beam"]
    assert config["devices"] == 1
    assert config["epochs"] == 3


def test_sample_zero_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="bad value for sample"):
        parse_args(["sample=0"])


def test_a_misspelt_run_folder_is_reported_as_a_missing_checkpoint(tmp_path):
    with pytest.raises(grukit.errors.GrukitError, match="not found"):
        grukit.Model("forecast", model=str(tmp_path / "runs" / "forecast" / "trian"))


def test_an_architecture_name_means_the_architecture_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lstm").mkdir()
    assert grukit.Model("forecast", model="lstm").cfg["model"] == "lstm"


@pytest.mark.parametrize(
    ("task", "args", "message"),
    [
        ("forecast", {"resume": True}, "compare trains new runs"),
        ("seq2seq", {"stream": True}, "seq2seq reads its pairs whole"),
        ("classify", {"sample": 0.5}, "with stream=true only"),
    ],
)
def test_keys_a_mode_cannot_honour_are_refused(task, args, message, tmp_path):
    model = grukit.Model(task, project=str(tmp_path), verbose=False, epochs=1)
    with pytest.raises(ConfigError, match=message):
        if "resume" in args:
            model.compare(**args)
        else:
            model.train(**args)
    assert not any(tmp_path.iterdir())  # refused before any run folder
