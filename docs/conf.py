"""Sphinx configuration: MyST Markdown pages, the settings reference generated from the traits' help."""

project = "cloudidentity-spawner"
copyright = "cloudidentity-spawner contributors"
author = "cloudidentity-spawner contributors"

extensions = [
    "myst_parser",
    "autodoc_traits",  # the `autoconfigurable` directive: traitlets settings with their help text
    "sphinx.ext.autodoc",
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
html_static_path = []


def _only_our_own_settings(app, docname, source):
    """The spawner section lists the settings CloudIdentitySpawner adds, not KubeSpawner's
    (linked) nor the identity settings (the section above): computed, so none is forgotten."""
    if docname == "reference/configuration":
        from cloudidentity_spawner.spawner import CloudIdentitySpawner

        own = CloudIdentitySpawner.class_own_traits(config=True)
        inherited = sorted(set(CloudIdentitySpawner.class_traits(config=True)) - set(own))
        source[0] = source[0].replace("INHERITED_SETTINGS", ", ".join(inherited))


def _command_help(app, docname, source):
    """The CLI reference shows what each command's --help prints (so it cannot drift)."""
    if docname == "reference/cli":
        from cloudidentity_spawner.cli import build_parser

        parser = build_parser()
        parts = [f"## `cloudidentity-spawner`\n\n```text\n{parser.format_help()}```"]
        commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        for name, sub in commands.choices.items():
            parts.append(f"## `cloudidentity-spawner {name}`\n\n```text\n{sub.format_help()}```")
        source[0] = source[0].replace("CLI_HELP", "\n\n".join(parts))


def setup(app):
    app.connect("source-read", _command_help)
    app.connect("source-read", _only_our_own_settings)
