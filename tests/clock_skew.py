"""A host whose clock is off: for tests of what runs on one host while another host's clock disagrees.

`skew_host_clock` shifts the Python clock that catalogan reads (`db.tables.utcnow`, wherever a module of ours
imported it) by a fixed offset until the test ends; the database server's clock is left alone. What a test
ran before the call ran on a host with the right time, what it runs after on the skewed host.
"""

from __future__ import annotations

import datetime as dt
import sys

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import db.tables
from db.tables import Timestamp

OUR_PACKAGES = frozenset({"db", "scheduler", "workers", "models"})


def skew_host_clock(monkeypatch: pytest.MonkeyPatch, offset: dt.timedelta) -> list[str]:
    """Make this process's clock run `offset` ahead (negative: behind); return the modules patched.

    Every loaded module of ours that imported `utcnow` gets the skewed one: the whole host is off, not one call.
    """
    real = db.tables.utcnow

    def skewed() -> dt.datetime:
        return real() + offset

    patched = []
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in OUR_PACKAGES and vars(module).get("utcnow") is real:
            monkeypatch.setattr(module, "utcnow", skewed)
            patched.append(name)
    return sorted(patched)


def database_time(session: Session) -> dt.datetime:
    """The database server's clock, now."""
    return session.execute(select(func.clock_timestamp(type_=Timestamp))).scalar_one()


def wait_until_database_passes(
    factory: sessionmaker[Session], moment: dt.datetime, timeout: float = 10
) -> None:
    """Block until the database server's clock is past `moment` (a lease that has really run out)."""
    with factory() as session:
        deadline = database_time(session) + dt.timedelta(seconds=timeout)
        while (now := database_time(session)) <= moment:
            assert now < deadline, f"the database clock did not pass {moment} within {timeout} s"
            session.execute(select(func.pg_sleep(0.05)))
