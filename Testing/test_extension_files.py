"""The extension's description files agree: DiffusionRegistration.s4ext (kept for the design's layout),
the ExtensionsIndex JSON entry, the top-level CMakeLists.txt, pyproject.toml and the LICENSE."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def s4ext() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "DiffusionRegistration.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            entries[key] = value.strip()
    return entries


def cmake_variable(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text())
    assert match, name
    return match.group(1)


def test_s4ext_and_index_entry_describe_the_same_extension():
    old, new = s4ext(), json.loads((ROOT / "DiffusionRegistration.json").read_text())
    assert new["scm_type"] == old["scm"] == "git"
    assert new["scm_url"] == old["scmurl"]
    assert new["scm_revision"] == old["scmrevision"]
    assert new["build_subdirectory"] == old["build_subdirectory"]
    assert new["category"] == old["category"] == cmake_variable("EXTENSION_CATEGORY")
    assert new["build_dependencies"] == old["depends"].split() == cmake_variable("EXTENSION_DEPENDS").split()
    assert old["homepage"] == cmake_variable("EXTENSION_HOMEPAGE")
    assert old["description"] == cmake_variable("EXTENSION_DESCRIPTION")
    assert old["iconurl"] == cmake_variable("EXTENSION_ICONURL")


def test_license_is_the_apache_2_text_that_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150
    assert re.search(r'license = \{ text = "Apache-2.0" \}|license = "Apache-2.0"', (ROOT / "pyproject.toml").read_text())


def test_the_module_resources_ship_with_the_module():
    """Every file the module reads from its Resources folder is listed in its CMakeLists.txt."""
    listed = (ROOT / "DiffusionRegistration" / "CMakeLists.txt").read_text()
    for name in ("Resources/UI/${MODULE_NAME}.ui", "Resources/Icons/${MODULE_NAME}.png", "Resources/requirements.txt"):
        assert name in listed, name
    assert (ROOT / "DiffusionRegistration" / "Resources" / "requirements.txt").is_file()
