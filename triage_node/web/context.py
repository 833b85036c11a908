"""What the web app needs from the daemon, passed in once (no module-level state)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import Config


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class WebContext:
    """``sessions``: the daemon's sessionmaker. ``spool_dir``: where ``Instance.path`` is relative to.
    ``metrics_registry``: served at /metrics (unauthenticated) when given. ``clock``: timezone-aware UTC now."""

    config: Config
    sessions: sessionmaker[Session]
    spool_dir: Path
    metrics_registry: CollectorRegistry | None = None
    clock: Callable[[], dt.datetime] = field(default=utc_now)
    # The worklist page shows at most this many studies (highest priority, oldest first) and says when there are more.
    page_rows: int = 500
