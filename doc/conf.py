# Sphinx configuration of the evit_ros documentation (MyST markdown pages, as rosdoc2 builds them for
# index.ros.org). Build: `make docs`, or `sphinx-build -W --keep-going -b html doc <output>`.
# rosdoc2 finds this file in the standard place (doc/conf.py), runs it and adds its own settings on top.
import importlib.util

project = "evit_ros"
author = "evit_ros maintainers"
copyright = "evit_ros maintainers, Apache-2.0"
release = "0.1.0"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# `page.md#some-heading` links: anchors for headings down to ###, checked at build time.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# The theme index.ros.org uses (rosdoc2 overrides the theme anyway); Sphinx's default when it is not installed.
html_theme = "sphinx_rtd_theme" if importlib.util.find_spec("sphinx_rtd_theme") else "alabaster"
html_title = "evit_ros"
