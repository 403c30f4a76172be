"""Each setting is declared once (engine.settings.declare): the command line's flags, the validation, the
`diffreg presets` listing and the README's settings table are derived from the declarations. Each test reads
the declaration and checks what a front end does with it, so a copy that drifts fails here."""
import math
import re
from pathlib import Path

import pytest

from DiffusionRegistrationLib.cli.main import build_parser, main
from DiffusionRegistrationLib.cli.settings import settings_table
from DiffusionRegistrationLib.engine.config import CONFIG_SETTINGS, RegistrationConfig
from DiffusionRegistrationLib.engine.options import OPTION_SETTINGS, RegistrationOptions
from DiffusionRegistrationLib.engine.settings import COMMANDS, Choice, Numbers
from DiffusionRegistrationLib.errors import RegistrationError

README = Path(__file__).resolve().parents[1] / "README.md"


def _subparser(command: str):
    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions).choices[command]


def _outside(setting) -> list:
    """Values just outside a number's declared range (the number itself, or a one-element list)."""
    number = setting.kind.item if isinstance(setting.kind, Numbers) else setting.kind
    high = number.high + (1 if number.kind is int else abs(number.high) * 1e-3 + 1e-6)
    low = number.low - (1 if number.kind is int else abs(number.low) * 1e-3 + 1e-6)
    values = [v for v in (low, high) if math.isfinite(v)]
    if number.low_open:
        values.append(number.low)
    return [[v] if isinstance(setting.kind, Numbers) else v for v in values]


def test_every_config_field_is_declared_and_its_default_is_the_dataclass_default():
    config = RegistrationConfig()
    assert list(CONFIG_SETTINGS) == list(config.to_dict())
    for name, setting in CONFIG_SETTINGS.items():
        assert setting.label and setting.help, name
        assert getattr(config, name) == (setting.check(setting.default) if setting.default is not None else None)


@pytest.mark.parametrize("name", [n for n, s in CONFIG_SETTINGS.items() if s.bounds])
def test_validation_takes_the_declared_range(name):
    setting = CONFIG_SETTINGS[name]
    low, high = setting.bounds
    if isinstance(setting.kind, Numbers):
        edge = (low, high) if name == "percentiles" else (high,) * len(setting.default)
    else:
        edge = high
    assert getattr(RegistrationConfig(**{name: edge}), name) == edge
    for value in _outside(setting):
        with pytest.raises(RegistrationError, match=re.escape(f"setting {name}=")):
            RegistrationConfig(**{name: value})


@pytest.mark.parametrize("command", COMMANDS)
def test_command_line_flags_are_the_declared_options(command):
    parser = _subparser(command)
    flags = {action.dest: action for action in parser._actions}
    declared = {name: s for name, s in OPTION_SETTINGS.items() if command in s.commands}
    assert declared, "no option declared for the command"
    for name, setting in declared.items():
        action = flags[name]
        assert action.option_strings == [setting.flag]
        assert action.default == setting.default
        assert setting.help.replace("%", "%%") in action.help
        if isinstance(setting.kind, Choice):
            assert action.metavar == "{" + ",".join(setting.choices) + "}"
    for name in set(OPTION_SETTINGS) - set(declared):
        assert name not in flags


@pytest.mark.parametrize("name", [n for n, s in OPTION_SETTINGS.items() if "register" in s.commands and s.bounds])
def test_a_flag_out_of_the_declared_range_is_refused_with_the_declarations_words(name, capsys, tmp_path):
    setting = OPTION_SETTINGS[name]
    value = _outside(setting)[-1]
    code = main(["register", "--fixed", str(README), "--moving", str(README), "--output-dir", str(tmp_path),
                 setting.flag, str(value)])
    assert code == 2
    error = capsys.readouterr().err
    assert f"setting {name}=" in error and setting.kind.describe() in error


def test_options_reuse_the_config_declaration_for_their_shortcuts():
    for name in ("similarity", "regularization", "device", "seed"):
        assert OPTION_SETTINGS[name].kind == CONFIG_SETTINGS[name].kind
        assert OPTION_SETTINGS[name].default is None  # the one unset marker
    assert OPTION_SETTINGS["steps"].kind == CONFIG_SETTINGS["iterations"].kind.item
    with pytest.raises(RegistrationError, match="setting steps="):
        RegistrationOptions(steps=OPTION_SETTINGS["steps"].bounds[1] + 1)


def test_readme_settings_table_is_the_declarations():
    text = README.read_text()
    table = text.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0].strip()
    assert table == settings_table(markdown=True), "README table is stale: regenerate with `diffreg presets --markdown`"
    for name in CONFIG_SETTINGS:
        assert f"| `{name}` |" in table


def test_presets_command_lists_every_declared_setting(capsys):
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out.split("\nsettings", 1)[1]
    for name, setting in CONFIG_SETTINGS.items():
        assert f"  {name} = " in listed and setting.help in listed
