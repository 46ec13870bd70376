"""The negative check, proven: plugins that advertise a contract and break it must fail that
contract's suite. Each broken plugin (testplugins/prism_acceptance_plugins.py) is served the
same checks a healthy plugin passes (test_conformance.py runs them against memstore and sqlite);
here they must fail — a suite that passes a broken plugin proves nothing."""

from __future__ import annotations

from typing import Any

import pytest
import suites  # noqa: F401 - registers the checks
from harness import open_ctx
from kit import CHECKS, Check
from targets import BROKEN, TARGETS, Target


def acceptance_cases(
    metafunc: pytest.Metafunc, targets: list[Target]
) -> tuple[str, list[Any], list[str]]:
    cases = []
    ids = []
    for target in BROKEN:
        for name in target.broken:
            (check,) = [c for c in CHECKS if c.name == name]
            cases.append((target, check))
            ids.append(f"{target.name}-{check.contract}-{name}")
    return "target,check", cases, ids


async def test_negative_proof_a_broken_plugin_fails_the_suite_it_advertises(
    target: Target, check: Check, env: Any
) -> None:
    # The broken plugin advertises the contract, so the suite is run against it ...
    assert check.applies(target.capabilities)
    # ... and the check a healthy plugin passes catches the breakage.
    healthy = [t for t in TARGETS if check.applies(t.capabilities)]
    assert healthy, f"no healthy target runs {check.name}"
    async with open_ctx(env, target, "direct", check.name) as ctx:
        with pytest.raises(AssertionError):
            await check.func(ctx)


async def test_negative_proof_the_refusal_checks_catch_an_undeclared_feature(env: Any) -> None:
    """A plugin that serves if_match without declaring set:etag (it under-declares, so clients
    cannot rely on it) fails the refusal check the SDK's own plugins pass."""
    from prism_acceptance_plugins import UnderDeclared
    from suites.refusal import refusal_checks

    target = Target(UnderDeclared.name, "", UnderDeclared, modes=("direct",))
    (check,) = [
        c
        for c in refusal_checks(target.capabilities)
        if c.name == "set_without_etag_refuses_if_match"
    ]
    async with open_ctx(env, target, "direct", check.name) as ctx:
        with pytest.raises(AssertionError):
            await check.func(ctx)
