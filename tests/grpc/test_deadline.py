"""prism.grpc.deadline against Trio's own effective deadline, over nested scopes."""

from __future__ import annotations

import math

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.grpc.deadline import effective_deadline

# One cancel scope per level: its deadline (None: none), shielded, cancelled on entry.
_level = st.tuples(
    st.none() | st.floats(min_value=-5, max_value=100, allow_nan=False),
    st.booleans(),
    st.sampled_from([False, False, False, True]),
)


@settings(max_examples=300, deadline=None)
@given(levels=st.lists(_level, max_size=12), in_child=st.booleans())
def test_effective_deadline_is_trios(
    levels: list[tuple[float | None, bool, bool]], in_child: bool
) -> None:
    seen: list[tuple[float, float]] = []

    def check() -> None:
        seen.append((effective_deadline(), trio.current_effective_deadline()))

    async def nest(rest: list[tuple[float | None, bool, bool]]) -> None:
        check()
        if not rest:
            return
        deadline, shield, cancel = rest[0]
        with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
            scope.shield = shield
            if cancel:
                scope.cancel()
            await nest(rest[1:])

    async def main() -> None:
        if in_child:  # a task's scopes continue its nursery's
            async with trio.open_nursery() as nursery:
                nursery.start_soon(nest, levels)
        else:
            await nest(levels)

    trio.run(main, clock=trio.testing.MockClock())  # frozen: no deadline expires meanwhile
    assert len(seen) == len(levels) + 1
    assert [ours for ours, _ in seen] == [theirs for _, theirs in seen]
