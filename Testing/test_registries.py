"""One registry each for presets and similarities: the command line's help, `diffreg presets` and validation
show exactly the registry's names (compared with the registry itself, not with a copy)."""
import pytest

from DiffusionRegistrationLib.cli.main import build_parser, main
from DiffusionRegistrationLib.engine.config import PRESETS, make_config
from DiffusionRegistrationLib.engine.options import RegistrationOptions
from DiffusionRegistrationLib.errors import RegistrationError
from DiffusionRegistrationLib.similarity.registry import SIMILARITIES


def _help(*command: str) -> str:
    parser = build_parser()
    for action in parser._subparsers._group_actions:
        parser = action.choices[command[0]]
    return " ".join(parser.format_help().split())


@pytest.mark.parametrize("command", ["register", "batch"])
def test_help_lists_every_preset_and_similarity(command):
    text = _help(command)
    assert f"--preset {{{','.join(PRESETS)}}}" in text
    assert f"--similarity {{{','.join(SIMILARITIES)}}}" in text


def test_presets_command_lists_the_registry_in_order(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out.split("\nsettings")[0]
    names = [line.split(":")[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert names == list(PRESETS)


def test_validation_accepts_exactly_the_registry():
    for name in PRESETS:
        make_config(name)
    for name in SIMILARITIES:
        assert make_config("default", {"similarity": name}).similarity == name
    with pytest.raises(RegistrationError, match=f"Choose one of: {', '.join(PRESETS)}"):
        make_config("nope")
    with pytest.raises(RegistrationError, match=f"allowed: one of {', '.join(SIMILARITIES)}"):
        make_config("default", {"similarity": "nope"})


def test_settings_resolve_in_one_order(tmp_path):
    """preset < settings file < overrides (--set) < dedicated flags."""
    settings = tmp_path / "s.json"
    settings.write_text('{"lr": 0.1, "regularization": 0.9, "seed": 4}')
    config = RegistrationOptions("fast", config_file=settings, overrides={"regularization": 0.7, "seed": 5}, seed=6,
                                 steps=11).config()
    assert (config.lr, config.regularization, config.seed) == (0.1, 0.7, 6)
    assert config.levels == PRESETS["fast"].settings["levels"] and config.iterations == (11, 11)
