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
