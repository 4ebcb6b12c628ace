"""The rate-limit headers' durations, spelled as OpenAI sends them."""

from __future__ import annotations

import pytest

from server.policy.headers import format_duration


@pytest.mark.parametrize(
    ("seconds", "spelled"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (1.5, "1.5s"),
        (6, "6s"),
        (60, "1m0s"),
        (90.25, "1m30.25s"),
    ],
)
def test_durations_are_spelled_as_openai_sends_them(seconds: float, spelled: str) -> None:
    assert format_duration(seconds) == spelled
