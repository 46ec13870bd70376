"""The README as a new user reads it: CI runs its test command as written, and its links (and
the docs') point at files in this repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Fenced blocks hold code, where `x[1](y)` is an index and a call, not a link.
FENCED = re.compile(r"^```(?!`).*?^```(?!`)", re.MULTILINE | re.DOTALL)


def commands(section: str) -> list[str]:
    """The shell commands in a README section's ```sh blocks."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [
        line
        for block in re.findall(r"```sh\n(.*?)```", body, re.S)
        for line in block.splitlines()
        if line.strip()
    ]


def test_readme_ci_runs_the_readme_test_command() -> None:
    (command,) = commands("Test it")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == command


def test_readme_commands_install_into_a_virtualenv() -> None:
    # PEP 668: a distribution's python3 refuses `pip install` outside a virtualenv.
    for command in commands("Run it") + commands("Test it"):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install "), command
        assert "python3 -m pip" not in command


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_readme_and_docs_links_stay_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(FENCED.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor on the same page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"
