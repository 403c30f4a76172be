"""Settings without torch or MRML: preset < file < overrides < flags (engine.options.RegistrationOptions), JSON
and TOML settings files, and how the options decide on diffusion.
Runs under every supported Python (see test_python_versions.py)."""
from __future__ import annotations

import json
import sys

import pytest

from DiffusionRegistrationLib.engine.config import PRESETS, RegistrationConfig, save_config
from DiffusionRegistrationLib.engine.options import RegistrationOptions
from DiffusionRegistrationLib.io import structured
from DiffusionRegistrationLib.errors import RegistrationError


def test_resolve_order_preset_file_overrides_flags(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"lr": 0.5, "regularization": 2.0, "levels": [2, 1], "iterations": [9, 9]}))
    config = RegistrationOptions("accurate", config_file=settings, overrides={"lr": 0.7}, regularization=3.0, steps=4,
                                 seed=5).config()
    assert (config.lr, config.regularization, config.seed) == (0.7, 3.0, 5)
    assert (config.levels, config.iterations) == ((2.0, 1.0), (4, 4))
    assert config.control_spacing == 2.0 and config.tolerance == 2e-5  # kept from the preset


def test_saved_config_reads_back_unchanged(tmp_path):
    config = RegistrationOptions("diffusion", similarity="diffusion", backbone="sd-2-1-base", mode="exact",
                                 seed=2).config()
    save_config(config, tmp_path / "job.json")
    assert RegistrationOptions(config_file=tmp_path / "job.json").config() == config
    assert RegistrationOptions("multimodal", config_file=tmp_path / "job.json").config() == config  # a whole config


def test_toml_settings_or_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "settings.toml"
    path.write_text('lr = 0.4\nlevels = [2.0, 1.0]\niterations = [5, 5]\n')
    if structured.tomllib is not None:
        assert RegistrationOptions(config_file=path).config().lr == 0.4
    monkeypatch.setattr(structured, "tomllib", None)
    with pytest.raises(RegistrationError, match="tomli"):
        RegistrationOptions(config_file=path).config()


def test_tomllib_or_tomli_is_found_where_installed():
    expected = sys.version_info >= (3, 11)
    try:
        import tomli  # noqa: F401
        expected = True
    except ImportError:
        pass
    assert (structured.tomllib is not None) == expected


@pytest.mark.parametrize("preset, similarity, backbone", [
    ("diffusion", None, "sd-2-1-base"),  # the preset selects the diffusion similarity
    ("default", "diffusion", "sd-2-1-base"),  # the similarity option does
    ("diffusion", "mind", None),  # the option overrides the preset
    ("multimodal", None, None),
])
def test_panel_options_decide_on_diffusion_from_the_resolved_settings(preset, similarity, backbone):
    options = RegistrationOptions(preset=preset, similarity=similarity, backbone="sd-2-1-base", mode="exact")
    assert options.diffusion_backbone() == backbone
    config = options.config()
    if backbone:
        assert config.similarity_params["extractor"] == backbone and config.similarity_params["mode"] == "exact"
    else:
        assert "extractor" not in config.similarity_params  # an intensity similarity gets no diffusion params


def test_none_means_as_the_preset_says_and_zero_is_a_value():
    unset = RegistrationOptions(preset="fast", steps=None, regularization=None, overrides={"threads": 1})
    assert unset.config() == RegistrationConfig(**{**RegistrationConfig().to_dict(), "threads": 1,
                                                   **PRESETS["fast"].settings})
    zero = RegistrationOptions(preset="fast", regularization=0.0).config()
    assert zero.regularization == 0.0 and unset.config().regularization == PRESETS["fast"].settings["regularization"]
