"""First login on a fresh install: the daemon says how to create a user, the login page says so too, and a user
added with ``triage-node user add`` can log in to the running daemon at once (no restart, no SIGHUP)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest
from peers import ROOT, running_daemon, wait_for

NO_MODELS = {"TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [], "mr_swi": [], "mr_dwi": []})}


def _login(web: httpx.Client, user: str, password: str) -> httpx.Response:
    token = re.search(r'name="csrf_token" value="([^"]+)"', web.get("/login").text)
    assert token is not None
    return web.post("/login", data={"username": user, "password": password, "csrf_token": token.group(1)})


@pytest.mark.timeout(120)
def test_first_start_says_how_to_add_a_user_and_the_running_daemon_accepts_it_at_once(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    with running_daemon(tmp_path / "d", **NO_MODELS, TRIAGE_NODE__STORAGE__DATABASE_URL=db_url) as d:
        wait_for(lambda: "no web users yet" in d.log(), timeout=10, what="the first-user message")
        line = next(x for x in d.log().splitlines() if "no web users yet" in x)
        assert f"triage-node user add NAME --config {ROOT / 'config.yaml'}" in line
        assert d.log().count("no web users yet") == 1
        with httpx.Client(base_url=f"http://127.0.0.1:{d.web_port}", timeout=10) as web:
            page = web.get("/login").text
            assert 'id="no-users"' in page and "triage-node user add" in page
            assert _login(web, "dr.first", "first login pass").status_code == 401

            add = subprocess.run(
                [sys.executable, "-m", "triage_node.cli", "user", "add", "dr.first", "--password-stdin",
                 "--config", str(ROOT / "config.yaml")],
                input="first login pass\n", capture_output=True, text=True, env=d.env, cwd=d.workdir, timeout=60,
            )
            assert add.returncode == 0, add.stderr
            assert 'id="no-users"' not in web.get("/login").text
            ok = _login(web, "dr.first", "first login pass")
            assert ok.status_code == 303, ok.text
            assert web.get("/").status_code == 200

            removed = subprocess.run(
                [sys.executable, "-m", "triage_node.cli", "user", "remove", "dr.first", "--config",
                 str(ROOT / "config.yaml")], capture_output=True, text=True, env=d.env, timeout=60,
            )
            assert removed.returncode == 0, removed.stderr
        with httpx.Client(base_url=f"http://127.0.0.1:{d.web_port}", timeout=10) as fresh:
            assert _login(fresh, "dr.first", "first login pass").status_code == 401
