"""The repository stands alone: its documentation is inside it and every reference points inside it.

Checked over README.md and every text file under src/, tests/, scripts/, benchmarks/ and docs/:

- no reference to the specification files the project was developed from (the upper-case method, benchmark
  and design notes), to a relative path starting with the development tree's ``shared`` folder, or to the
  development machine's ``/work`` tree. An absolute example path such as ``--out /shared/run`` (a user's mount
  point) is not a reference and is allowed;
- no tracker issue numbers ("issue" or "issues" followed by a number, with or without ``#``); a link to an
  upstream project's issue page (``.../issues/123``) is allowed;
- every relative Markdown link in README.md and docs/*.md (outside code) names an existing file inside the
  repository, and a ``#fragment`` on a link to a Markdown file names one of its headings;
- every ``docs/...`` file that the package, the tests or the benchmarks mention exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED_DIRS = ("src", "tests", "scripts", "benchmarks", "docs")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}  # plus *.egg-info (build output, git-ignored)

# Written so that this file does not match itself.
SPEC_FILE = re.compile(r"\b(?:METHOD|BENCHMARKS|DESIGN)\.md\b")  # case-sensitive: docs/method.md is ours
SHARED_RELATIVE = re.compile(r"(?<![\w./~-])shared(?=/)")  # relative only: not after "/", "." or a name
DEV_TREE = re.compile(r"/work(?=/)")
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)
FORBIDDEN = {
    "a specification file of the development tree": SPEC_FILE,
    "a path inside the development tree's shared folder": SHARED_RELATIVE,
    "a path of the development machine": DEV_TREE,
    "a tracker issue number": ISSUE_NUMBER,
}

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
DOCS_MENTION = re.compile(r"\bdocs/[\w.-]+\.(?:md|png|json|html)\b")


def _text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in SCANNED_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT).parts
            if not path.is_file() or any(p in SKIPPED_DIRS or p.endswith(".egg-info") for p in rel):
                continue
            files.append(path)
    return files


def _read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (figures, weights)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _without_code(text: str) -> str:
    """Markdown with fenced blocks and inline code blanked out (line numbers kept)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return INLINE_CODE.sub("``", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", md.read_text(encoding="utf-8")), re.MULTILINE)
    return {_slug(h) for h in headings}


def test_the_patterns_catch_what_they_should():
    """The rules themselves: what counts as a reference out of the repository and what does not."""
    spec = "METHOD" + ".md"
    assert SPEC_FILE.search(f"see {spec}") and SPEC_FILE.search("`shared" + f"/{spec}`")
    assert not SPEC_FILE.search("see docs/method.md")
    assert SHARED_RELATIVE.search("the calibration in `shared" + "/x.md`")
    assert SHARED_RELATIVE.search("shared" + "/x.md at the start of a line")
    assert not SHARED_RELATIVE.search("--out /shared" + "/run") and not SHARED_RELATIVE.search("runs/shared" + "/a")
    assert DEV_TREE.search("/work" + "/main/README.md")
    assert ISSUE_NUMBER.search("Issue " + "7's code") and ISSUE_NUMBER.search("(issue " + "10)")
    assert ISSUE_NUMBER.search("issues #" + "3 and 4")
    assert not ISSUE_NUMBER.search("github.com/pytorch/pytorch/issues/" + "123")
    assert not ISSUE_NUMBER.search("the issue is that 10 tasks")
    assert LINK.findall("a [link](sub/x.md#y) and ![img](p.png)") == ["sub/x.md#y", "p.png"]
    assert _slug("Deviations from the authors' code") == "deviations-from-the-authors-code"
    assert _slug("`ca`: classifier alignment") == "ca-classifier-alignment"


def test_no_reference_outside_the_repository_and_no_issue_numbers():
    bad = []
    for path in _text_files():
        text = _read_text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    bad.append(f"{path.relative_to(ROOT)}:{lineno}: {what}: {line.strip()[:140]}")
    assert not bad, "references that a user of the repository cannot follow (point them to docs/ instead):\n" + (
        "\n".join(bad)
    )


def broken_links(md: Path, root: Path = ROOT) -> list[str]:
    """The relative links of Markdown file ``md`` (outside code) that do not name an existing file inside
    ``root``, or whose ``#fragment`` names no heading of the Markdown file linked, one line each."""
    md, root = md.resolve(), root.resolve()
    bad = []
    for lineno, line in enumerate(_without_code(md.read_text(encoding="utf-8")).splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ...
                continue
            file_part, _, fragment = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            where = f"{md.relative_to(root)}:{lineno}: ({target})"
            if root not in dest.parents:
                bad.append(f"{where} points outside the repository")
            elif not dest.exists():
                bad.append(f"{where} names a file that does not exist")
            elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
                bad.append(f"{where} names no heading of {dest.relative_to(root)}")
    return bad


def test_the_link_check_finds_broken_links(tmp_path: Path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# Title\n\n## Some `code`: here\n", encoding="utf-8")
    (tmp_path / "fig.png").write_bytes(b"\x89PNG")
    md = tmp_path / "README.md"
    md.write_text(
        "ok [a](notes/a.md), [h](notes/a.md#some-code-here), ![f](fig.png), [web](https://example.org/x.md), [top](#t)\n"
        "# T\n"
        "bad [m](notes/missing.md) and [h](notes/a.md#nope) and [o](../outside.md)\n"
        "```\n[in code](notes/also-missing.md)\n```\n"
        "`[inline](notes/inline-missing.md)`\n",
        encoding="utf-8",
    )
    bad = broken_links(md, tmp_path)
    assert len(bad) == 3, bad
    assert "README.md:3: (notes/missing.md) names a file that does not exist" in bad
    assert any("notes/a.md#nope" in b and "no heading" in b for b in bad)
    assert any("../outside.md" in b and "outside the repository" in b for b in bad)


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_markdown_links_resolve(md: Path):
    bad = broken_links(md)
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_docs_mentioned_by_the_code_exist():
    """A docstring or comment that sends the reader to docs/... must name a file that is there. (scripts/ are
    left out: they name the reports they write.)"""
    bad = []
    for path in _text_files():
        if path.relative_to(ROOT).parts[0] not in ("src", "tests", "benchmarks"):
            continue
        text = _read_text(path)
        for name in set(DOCS_MENTION.findall(text or "")):
            if not (ROOT / name).is_file():
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert not bad, "mentions of documentation files that do not exist:\n" + "\n".join(bad)


def test_the_method_and_benchmark_notes_are_in_the_repository_and_linked_from_the_readme():
    readme = _without_code((ROOT / "README.md").read_text(encoding="utf-8"))
    links = {target.partition("#")[0] for target in LINK.findall(readme)}
    for doc in ("docs/method.md", "docs/benchmarks.md"):
        assert (ROOT / doc).is_file(), f"{doc} is missing"
        assert doc in links, f"README.md does not link {doc}"


# ---------------------------------------------------------------- the documentation site (mkdocs)

# the pages the site must have, by what a reader looks for (README links each)
REQUIRED_PAGES = {
    "install and the two commands": "install.md",
    "running on your data": "data.md",
    "the method as implemented": "method.md",
    "every method and baseline": "methods.md",
    "classifiers": "classifiers.md",
    "benchmarks and results": "results.md",
    "analysis and theory checks": "analysis.md",
    "run safety": "run_safety.md",
    "distributed runs": "distributed.md",
    "the paper's grid on clusters": "paper_grid.md",
    "precision": "precision.md",
    "the code layout": "layout.md",
    "the API reference": "api.md",
}
README_MAX_LINES = 250


def _nav_pages() -> list[str]:
    """Every page named in mkdocs.yml's nav, in order."""
    import yaml

    def walk(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in walk(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in walk(value)]
        return []

    return walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])


def test_every_page_is_in_the_site_and_every_entry_exists():
    import yaml

    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert site["docs_dir"] == "docs" and site.get("strict") is True
    nav = _nav_pages()
    excluded = [line.strip().rstrip("/") for line in str(site.get("exclude_docs", "")).splitlines() if line.strip()]
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")
             if not any(p.relative_to(ROOT / "docs").as_posix().startswith(e + "/") for e in excluded)}
    assert pages - set(nav) == set(), "pages missing from mkdocs.yml's nav"
    assert [p for p in nav if not (ROOT / "docs" / p).is_file()] == [], "nav entries without a page"
    assert len(nav) == len(set(nav)), "a page listed twice in the nav"


def test_the_readme_is_a_front_door_to_every_required_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    links = {t.partition("#")[0] for t in LINK.findall(_without_code(text))}
    nav = set(_nav_pages())
    for what, page in REQUIRED_PAGES.items():
        assert (ROOT / "docs" / page).is_file(), f"no page for {what}"
        assert f"docs/{page}" in links, f"README.md does not link the page for {what} (docs/{page})"
        assert page in nav, f"the site's nav does not list {what} ({page})"


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link, a missing page or an API reference that does not resolve fails
    (``make docs`` installs mkdocs; without it this test cannot build the site)."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make docs installs it)")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed (make docs installs it)")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ,
                                                                        "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    assert "Start or resume ONE run" in (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    shutil.rmtree(tmp_path / "site")
