"""The receive tests run on both receive transports."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["stock", "fast"])
def transport(request: pytest.FixtureRequest) -> str:
    """``scp.transport`` of the SCPs these tests start: each test runs on both."""
    return str(request.param)
