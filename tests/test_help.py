"""Help that teaches: every option says what it is, `stnkit train --help` lists every config key
with its default and meaning, and a misspelt name gets one "did you mean" line."""
import argparse
import dataclasses
import re

import pytest
import yaml
from test_cli_errors import one_line

from stnkit._checks import did_you_mean
from stnkit.app.cli import main, parser
from stnkit.models import create_model
from stnkit.train.config import HELP, RESUMABLE, RunConfig


def subcommands(p: argparse.ArgumentParser, path: tuple = ()):
    """(command words, parser) for the top-level parser and every subcommand, nested ones too."""
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, (*path, name))


def test_the_walk_reaches_nested_subcommands():
    names = {" ".join(words) for words, _ in subcommands(parser())}
    assert {"", "train", "show", "reproduce", "data", "data show", "data download", "plot"} <= names


def test_every_option_positional_and_subcommand_has_help():
    missing = []
    for words, p in subcommands(parser()):
        for action in p._actions:
            if not (action.help or "").strip():
                missing.append(f"stnkit {' '.join(words)}: {action.option_strings or action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if (a.help or "").strip()}
                missing += [f"stnkit {' '.join(words)} {n}" for n in action.choices if n not in helped]
    assert missing == []


def train_help(capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_every_config_key_has_a_one_line_meaning():
    keys = [f.name for f in dataclasses.fields(RunConfig)]
    assert sorted(HELP) == sorted(keys)
    assert all(HELP[k].strip() and "\n" not in HELP[k] for k in keys)


def test_train_help_lists_every_key_with_its_default_and_meaning(capsys):
    out = train_help(capsys)
    keys = out[out.index("config keys, their defaults"):]  # the epilog, below the options
    for key, default in RunConfig().to_dict().items():
        row = re.search(rf"^  {key} +(\S+) +(.+)$", keys, re.MULTILINE)
        assert row, f"{key} is not in stnkit train --help"
        assert yaml.safe_load(row[1]) == default  # shown as it is typed after key=
        assert row[2] == HELP[key]


def test_train_help_says_how_keys_are_given_and_which_may_change_on_resume(capsys):
    out = train_help(capsys)
    assert "key=value after the experiment" in out and "--config FILE" in out
    resume = " ".join(out.split("key=value may then change only")[1].split())
    assert resume.rstrip(".").split(", ") == list(RESUMABLE)


@pytest.mark.parametrize("argv, start, hint", [
    (["train", "rts", "--model", "st-cnn-afine"], "config key 'model' = 'st-cnn-afine' is not allowed: one of [",
     "did you mean 'st-cnn-affine'?"),
    (["train", "rst"], "config key 'experiment' = 'rst' is not allowed: one of [", "did you mean 'rts'?"),
    (["train", "rts", "lr_step=[5]"], "unknown config key 'lr_step' (did you mean 'lr_steps'?); known keys: [",
     "did you mean 'lr_steps'?"),
    (["train", "rts", "optimizer=adm"], "config key 'optimizer' = 'adm' is not allowed", "did you mean 'adam'?"),
    (["data", "show", "rst"], "unknown dataset 'rst'; known: [", "did you mean 'rts'?"),
])
def test_a_misspelt_name_gets_one_suggestion_on_one_line(argv, start, hint, tmp_path, capsys):
    assert main([*argv, *(["--out", str(tmp_path / "x.png")] if argv[0] == "data" else [])]) == 2
    err = one_line(capsys)
    assert err.startswith(f"stnkit: error: {start}")
    assert err.count("did you mean") == 1 and hint in err


@pytest.mark.parametrize("argv, known", [
    (["train", "rts", "--model", "xyzzy"], "'st-cnn-affine'"),
    (["train", "rts", "colour=blue"], "known keys: ['batch_size'"),
    (["data", "show", "nope"], "'rts'"),
])
def test_a_name_with_nothing_close_lists_the_known_ones(argv, known, tmp_path, capsys):
    assert main([*argv, *(["--out", str(tmp_path / "x.png")] if argv[0] == "data" else [])]) == 2
    err = one_line(capsys)
    assert known in err and "did you mean" not in err


def test_several_unknown_keys_each_get_their_own_suggestion(capsys):
    assert main(["train", "rts", "lr_step=[5]", "colour=blue", "bach_size=8"]) == 2
    err = one_line(capsys)
    assert "unknown config keys 'bach_size' (did you mean 'batch_size'?), 'colour', 'lr_step' (did you mean " \
           "'lr_steps'?); known keys" in err


def test_create_model_suggests_the_registered_name():
    with pytest.raises(ValueError, match=r"^unknown model 'st-cnn-afine'; known: \[.*\]; did you mean 'st-cnn-affine'\?$"):
        create_model("st-cnn-afine")


@pytest.mark.parametrize("argv, hint", [(["trian", "rts"], "did you mean 'train'?"),
                                        (["data", "shwo", "rts"], "did you mean 'show'?"),
                                        (["reproduce", "tabel1"], "did you mean 'table1'?"),
                                        (["xyzzy"], None)])
def test_a_misspelt_subcommand_or_choice(argv, hint, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert "invalid choice" in last
    assert last.endswith(f"; {hint}") if hint else "did you mean" not in last


def test_did_you_mean_names_the_closest_or_nothing():
    assert did_you_mean("lr_step", ["lr", "lr_steps", "gamma"]) == "did you mean 'lr_steps'?"
    assert did_you_mean("xyzzy", ["lr", "lr_steps"]) == ""
    assert did_you_mean(5, ["sgd"]) == ""
