"""Every contract's suite against every selected target that claims it, in each of its modes
(direct, in_process, sidecar), plus the refusal checks built from what it does not claim."""

from __future__ import annotations

from typing import Any

import pytest
import suites  # noqa: F401 - registers the checks
from harness import open_ctx
from kit import Check, checks_for
from suites.refusal import refusal_checks
from targets import Target


def acceptance_cases(
    metafunc: pytest.Metafunc, targets: list[Target]
) -> tuple[str, list[Any], list[str]]:
    cases: list[Any] = []
    ids: list[str] = []
    for target in targets:
        capabilities = target.capabilities
        fitting = [c for c in checks_for(capabilities) if c.fits(target)]
        for check in [*fitting, *refusal_checks(capabilities)]:
            for mode in target.modes:
                cases.append(((target.name, check.contract), target, mode, check))
                ids.append(f"{target.name}-{mode}-{check.contract}-{check.name}")
    return "acceptance_label,target,mode,check", cases, ids


async def test_conformance(
    acceptance_label: tuple[str, str], target: Target, mode: str, check: Check, env: Any
) -> None:
    async with open_ctx(env, target, mode, check.name) as ctx:
        await check.func(ctx)
