"""The README is a manual: short, the commands first, and every link into docs/ leads somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_short_and_starts_with_the_users_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    heads = [i for i, line in enumerate(lines) if line.startswith("## ")]
    first = [lines[i] for i in heads[:3]]
    assert first[0].startswith("## Set up") and first[1].startswith("## Sample") and "Quickstart" in first[2]
    assert heads[2] < 100  # set-up, test, sample and the quickstart within the first 100 lines
    assert any("python -m pytest -q" in line for line in lines[heads[0] : heads[1]])  # the test command CI runs


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_anchor_names_a_heading_of_its_page():
    broken = []
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()):
            path = page.parent / target if target else page
            if path.suffix != ".md" or not path.exists():
                continue
            heads = {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}
            if anchor not in heads:
                broken.append(f"{page.relative_to(ROOT)} -> {target}#{anchor}")
    assert not broken, broken
