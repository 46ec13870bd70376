"""Every ```python block in README.md and docs/*.md runs as written: each is a program of its
own, run with this environment's Python (the project installed) in a temporary directory.

A block that is not meant to run says so in its fence, with the reason after it, and is kept
rare (a fragment that only shows a shape, for example)::

    ```python no-run: a fragment (the handler shapes only)

An example that prints a result also asserts it, so that this test fails when the docs do not
say what the code does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python(?P<info>[^\n]*)\n(?P<code>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
NO_RUN = re.compile(r"^\s*no-run:\s*\S")


@dataclass(frozen=True)
class Block:
    key: str  # "docs/grpc-api.md#2"
    line: int  # of the opening fence
    info: str  # the fence's info string after "python"
    code: str


def python_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    name = str(path.relative_to(REPO))
    return [
        Block(f"{name}#{i}", text.count("\n", 0, m.start()) + 1, m["info"], m["code"])
        for i, m in enumerate(FENCE.finditer(text), 1)
    ]


BLOCKS = [block for path in DOCUMENTS for block in python_blocks(path)]


def test_docs_examples_no_run_blocks_give_a_reason() -> None:
    for block in BLOCKS:
        info = block.info.strip()
        assert not info or NO_RUN.match(info), (
            f"{block.key} (line {block.line}): the fence says {info!r}; the only mark is "
            "'no-run: <why>'"
        )


@pytest.mark.parametrize("block", [pytest.param(b, id=b.key) for b in BLOCKS if not b.info.strip()])
def test_docs_example_runs_as_written(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.code)
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,  # only catches a hang
    )
    assert run.returncode == 0, (
        f"{block.key} (line {block.line}) exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    )
