"""package.xml (what rosdep installs) and setup.py (what pip installs) agree, cover every import, and share one
version with evit_ros.__version__ and `evit-ros --version`.

Rosdep keys for pip names are those of rosdistro's rosdep/python.yaml (ros/rosdistro 8468e88: python3-matplotlib
l.5437, python3-numpy l.5923, python3-opencv l.6111, python3-setuptools l.8308, python3-tqdm l.9009,
python3-yaml l.9553).
"""

from __future__ import annotations

import ast
import os
import re
import runpy
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import setuptools
from conftest import REPO_ROOT

import evit_ros
from evit_ros.cli.main import main as evit_main

# pip distribution -> rosdep key, where rosdep has one that installs a usable build.
ROSDEP_KEYS = {
    "setuptools": "python3-setuptools",
    "numpy": "python3-numpy",
    "opencv-python-headless": "python3-opencv",
    "pyyaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
}
# import name -> pip distribution, where they differ.
DISTRIBUTIONS = {"cv2": "opencv-python-headless", "yaml": "pyyaml"}
# Imported, declared in neither file on purpose (package.xml says why in a comment).
UNDECLARED = {"tensorrt": "TensorRT"}
DEPEND_TAGS = ("depend", "exec_depend", "build_depend", "buildtool_depend", "build_export_depend")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


@pytest.fixture(scope="module")
def package_xml() -> ET.Element:
    return ET.parse(REPO_ROOT / "package.xml", ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))).getroot()


@pytest.fixture(scope="module")
def rosdep_keys(package_xml: ET.Element) -> set[str]:
    return {e.text.strip() for tag in DEPEND_TAGS for e in package_xml.iter(tag)}


@pytest.fixture(scope="module")
def pip_only(package_xml: ET.Element) -> dict[str, str]:
    """``<!-- pip-only NAME: reason -->`` comments: NAME -> reason."""
    found = {}
    for comment in (e.text for e in package_xml.iter(ET.Comment)):
        match = re.fullmatch(r"\s*pip-only ([\w.-]+): (.+?)\s*", comment, flags=re.S)
        if match:
            found[match[1].lower()] = match[2]
    return found


@pytest.fixture(scope="module")
def setup_kwargs() -> dict:
    """What setup.py hands to setuptools.setup, read by running it with setup() replaced."""
    captured = {}
    saved, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    os.chdir(REPO_ROOT)  # as pip and colcon run it: its globs are relative
    try:
        runpy.run_path(str(REPO_ROOT / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = saved
        os.chdir(cwd)
    return captured


def test_one_version_everywhere(package_xml: ET.Element, setup_kwargs: dict, capsys) -> None:
    version = package_xml.findtext("version")
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert setup_kwargs["version"] == version
    assert evit_ros.__version__ == version
    with pytest.raises(SystemExit) as done:
        evit_main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"evit-ros {version}"


def test_install_requires_resolve_through_rosdep(setup_kwargs: dict, rosdep_keys: set[str]) -> None:
    for requirement in setup_kwargs["install_requires"]:
        name = _name(requirement)
        assert name in ROSDEP_KEYS, f"{name}: no rosdep key known; add it to ROSDEP_KEYS from rosdep/python.yaml"
        assert ROSDEP_KEYS[name] in rosdep_keys, f"package.xml lacks {ROSDEP_KEYS[name]} (setup.py requires {name})"


def test_every_extra_has_a_rosdep_key_or_says_why_it_is_pip_only(
    setup_kwargs: dict, rosdep_keys: set[str], pip_only: dict[str, str]
) -> None:
    extras = {_name(r) for reqs in setup_kwargs["extras_require"].values() for r in reqs}
    for name in sorted(extras):
        assert ROSDEP_KEYS.get(name) in rosdep_keys or name in pip_only, (
            f"{name} (setup.py extra) has neither a rosdep key in package.xml nor a '<!-- pip-only {name}: why -->'"
        )
    stale = set(pip_only) - extras
    assert not stale, f"package.xml calls these pip-only but no setup.py extra installs them: {sorted(stale)}"
    assert all(len(reason) > 10 for reason in pip_only.values()), pip_only


def test_every_import_is_declared(setup_kwargs: dict, rosdep_keys: set[str], package_xml: ET.Element) -> None:
    """Each third-party module the package or its launch file imports is a package.xml dependency (ROS packages
    by their own name) or a setup.py requirement."""
    declared = {_name(r) for r in setup_kwargs["install_requires"]}
    declared |= {_name(r) for reqs in setup_kwargs["extras_require"].values() for r in reqs}
    files = [*(REPO_ROOT / "evit_ros").rglob("*.py"), *(REPO_ROOT / "launch").glob("*.py")]
    imported: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imported.setdefault(name.split(".")[0], str(path.relative_to(REPO_ROOT)))
    third_party = {m: p for m, p in imported.items() if m not in sys.stdlib_module_names and m != "evit_ros"}
    assert {"numpy", "cv2", "rclpy", "torch"} <= set(third_party)  # the scan sees imports at all
    comments = " ".join(e.text for e in package_xml.iter(ET.Comment))
    for module, where in sorted(third_party.items()):
        if module in UNDECLARED:
            assert UNDECLARED[module] in comments, f"package.xml should say why {module} is not declared"
            continue
        dist = DISTRIBUTIONS.get(module, module).lower()
        assert module in rosdep_keys or dist in declared, f"{module} (imported by {where}) is declared nowhere"


def test_ros_dependencies_are_exec_depends(package_xml: ET.Element) -> None:
    exec_depends = {e.text for e in package_xml.iter("exec_depend")}
    for key in ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch", "launch_ros"):
        assert key in exec_depends, key
    assert package_xml.find("export/build_type").text == "ament_python"


def test_sdist_manifest_carries_what_setup_py_reads(setup_kwargs: dict) -> None:
    """setup.py reads package.xml and installs data_files: an sdist without them could not build the same wheel."""
    manifest = (REPO_ROOT / "MANIFEST.in").read_text()
    for _, files in setup_kwargs["data_files"]:
        for f in files:
            path = Path(f)
            assert path.as_posix() in manifest or f"recursive-include {path.parent.as_posix()} " in manifest, f
