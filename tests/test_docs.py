"""The docs cannot drift: docs/cli.md is what the options render, and every link lands."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from quiesce import App
from quiesce.cli import reference
from quiesce.cli.options import OPTIONS, Option
from quiesce.cli.sources import OptionError, config_file, gather

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
REGENERATE = "regenerate it: python -m quiesce.cli.reference docs/cli.md"


def test_docs_cli_md_is_what_the_options_render_now() -> None:
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == reference.render(), REGENERATE


def test_reference_module_writes_the_file_it_renders(tmp_path: Path) -> None:
    target = tmp_path / "cli.md"
    done = subprocess.run(
        [sys.executable, "-m", "quiesce.cli.reference", str(target)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_text(encoding="utf-8") == reference.render()


def _sample(option: Option) -> str:
    """A value ``option`` parses (as text, as a variable would give it)."""
    for raw in ("1", "m:a", "info", "granian"):
        try:
            option.parse(raw)
        except ValueError:
            continue
        return raw
    raise AssertionError(f"no sample value for {option.name}")


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_reference_says_which_variables_and_file_keys_set_each_option(
    option: Option, tmp_path: Path
) -> None:
    raw = _sample(option)
    if option.name == "config":  # QUIESCE_CONFIG names the file rather than being one of its keys
        named = tmp_path / "other.toml"
        named.write_text("")
        found, _ = config_file(None, {"QUIESCE_CONFIG": str(named)}, str(tmp_path))
        by_variable = found == str(named)
    else:
        by_variable = option.name in gather({}, {option.env: raw}, "", {})
    assert (reference.from_environment(option), reference.in_file(option)) == (
        by_variable,
        _a_file_key_sets(option, raw),
    )


def _a_file_key_sets(option: Option, raw: str) -> bool:
    try:
        gather({}, {}, "quiesce.toml", {option.name: raw})
    except OptionError as exc:
        return "command line only" not in str(exc)
    return True


def test_reference_defaults_are_those_the_app_itself_has() -> None:
    # With an ASGI target the App's own defaults apply: the table must show those.
    params = inspect.signature(App).parameters
    checked = [o for o in OPTIONS if o.app is not None and o.app != "name"]
    assert checked
    for option in checked:
        assert option.app is not None
        assert option.default == params[option.app].default, option.name


def test_reference_example_config_file_is_accepted_as_it_stands() -> None:
    table = tomllib.loads(reference.EXAMPLE_TOML)
    settings = gather({}, {}, "quiesce.toml", table)
    assert set(settings) == set(table)
    assert all(s.source == "file quiesce.toml" for s in settings.values())
    assert reference.EXAMPLE_TOML in reference.render()


# -- links ---------------------------------------------------------------------

_FENCE = re.compile(r"^```.*?^```", flags=re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", flags=re.MULTILINE)


def _prose(page: Path) -> str:
    """The page without its code blocks (a ``# comment`` there is not a heading)."""
    return _FENCE.sub("", page.read_text(encoding="utf-8"))


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of the page's headings."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_prose(page)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links() -> list[tuple[Path, str]]:
    found = []
    for page in PAGES:
        for target in _LINK.findall(_prose(page)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto: are not ours
                found.append((page, target))
    return found


def test_docs_exist_and_link_each_other() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    assert {"README.md", "cli.md", "concepts.md", "kubernetes.md", "migrating.md"} <= names
    assert {"go-concepts.md", "registry.md"} <= names
    linked = {(page.parent / t.partition("#")[0]).resolve() for page, t in _links()}
    for page in DOCS.glob("*.md"):
        assert page.resolve() in linked, f"nothing links to {page.name}"


@pytest.mark.parametrize("link", _links(), ids=lambda link: f"{link[0].name}->{link[1]}")
def test_every_relative_link_points_at_a_file_and_heading_that_exist(
    link: tuple[Path, str],
) -> None:
    page, target = link
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.is_file(), f"{page.name}: {target}: no such file"
    if anchor and linked.suffix == ".md":
        assert anchor in _anchors(linked), f"{page.name}: {target}: no such heading"
