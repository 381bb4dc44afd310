"""The documentation: doc/ builds with warnings as errors, links resolve, every node parameter is documented."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evit_ros.runtime.options import BACKEND_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "doc"
README = ROOT / "README.md"
MARKDOWN = [README, *sorted(DOC.glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~|:::)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose_lines(path: Path, keep_code: bool = False) -> list[str]:
    """The lines outside fenced blocks, inline code removed unless keep_code (a link inside code is no link)."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line if keep_code else _INLINE_CODE.sub("", line))
    return lines


def _slug(heading: str) -> str:
    """The anchor GitHub and MyST (myst_heading_anchors) give a heading."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in _prose_lines(path, keep_code=True) if re.match(r"#{1,6} ", line)}


def _sphinx_missing() -> str | None:
    for module in ("sphinx", "myst_parser"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -r requirements-dev.txt)"
    return None


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    missing = _sphinx_missing()
    if missing:
        pytest.skip(missing)
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOC), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "html" / "index.html").is_file()
    for page in DOC.glob("*.md"):
        assert (tmp_path / "html" / f"{page.stem}.html").is_file(), f"{page.name} was not built (not in a toctree?)"


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; move reference material into doc/"
    text = "\n".join(lines)
    for command in ("make demo", "make test"):
        assert command in text


def test_relative_links_point_to_existing_files() -> None:
    broken = []
    for path in MARKDOWN:
        for line in _prose_lines(path):
            for target in _LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # a URL, or an anchor on the same page (Sphinx checks those in doc/)
                file_part, _, anchor = target.partition("#")
                resolved = (path.parent / file_part).resolve()
                if not resolved.exists():
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
                elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _node_parameter_defaults() -> dict[str, object]:
    """Name -> default of seg_node's ``_parameter_table`` (the module imports rclpy: skip where it is absent)."""
    pytest.importorskip("rclpy", reason="rclpy is not installed (seg_node's parameter table imports it)")
    from evit_ros.ros.seg_node import _parameter_table

    return {name: spec.default for name, spec in _parameter_table().items()}


def _as_documented(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def _table(path: Path, first_header: str) -> dict[str, dict[str, str]]:
    """The rows of the markdown tables whose first header is ``first_header``: name -> {header: cell}."""
    rows: dict[str, dict[str, str]] = {}
    headers: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            headers = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if headers is None:
            headers = cells if cells[0] == first_header else []
        elif headers and not set(cells[0]) <= set("-: "):
            rows[cells[0].strip("`")] = {h: c.strip("`") for h, c in zip(headers, cells, strict=False)}
    return rows


def test_every_node_parameter_is_documented_with_its_default() -> None:
    documented = _table(DOC / "node.md", "Name")
    params = _node_parameter_defaults()
    assert "model" in params and "cameras" in params  # the parse found the table
    missing = sorted(set(params) - set(documented))
    assert not missing, f"node parameters missing from the table in doc/node.md: {', '.join(missing)}"
    wrong = {
        name: (documented[name]["Default"], _as_documented(default))
        for name, default in params.items()
        if documented[name]["Default"] != _as_documented(default)
    }
    assert not wrong, f"doc/node.md parameter defaults (documented, code): {wrong}"


def test_every_backend_option_is_documented_with_its_default() -> None:
    node_page = (DOC / "node.md").read_text(encoding="utf-8")
    documented = _table(DOC / "backends.md", "option")
    for opt in BACKEND_OPTIONS:
        assert f"`{opt.name}`" in node_page, f"backend option {opt.name} (a node parameter) not named in doc/node.md"
        assert opt.name in documented, f"backend option {opt.name} missing from the table in doc/backends.md"
        assert documented[opt.name]["flag"].startswith(opt.flag), f"{opt.name}: its flag is {opt.flag}"
        assert documented[opt.name]["default"] == _as_documented(opt.default), f"{opt.name}: default {opt.default}"
