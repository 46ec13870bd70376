from __future__ import annotations

from hypothesis import HealthCheck, settings

# The machine is shared and noisy: property tests must not fail on wall-clock deadlines.
settings.register_profile(
    "prism", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("prism")
