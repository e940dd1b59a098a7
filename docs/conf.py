"""Sphinx configuration: MyST Markdown pages (the reference's generated parts: docs/reference_pages.py)."""

project = "cloudidentity-spawner"
copyright = "cloudidentity-spawner contributors"
author = "cloudidentity-spawner contributors"

extensions = [
    "myst_parser",
    "sphinx_copybutton",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]
nitpicky = False

html_theme = "pydata_sphinx_theme"
html_title = "cloudidentity-spawner"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = ["_static"]
html_css_files = ["wrap.css"]
