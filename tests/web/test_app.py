"""The app's edges: health and metrics, login and logout, session timeout, CSRF, no patient data without login."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import select
from web_fixtures import PASSWORD, PATIENT_ID, USER, Clock, Seeded, login

from triage_node.config import Config
from triage_node.web import WebContext, create_app
from triage_node.web.auth import SESSION_COOKIE
from triage_node.worklist.db import transaction
from triage_node.worklist.models import AuditEntry, Study

PHI = ("TESTPATIENT", PATIENT_ID, "ACC-CRIT-1")


def protected_urls(seeded: Seeded) -> list[str]:
    uid = seeded.critical_uid
    return [
        "/",
        "/partials/worklist",
        f"/studies/{uid}",
        f"/studies/{uid}/key-images/{seeded.critical_job_id}/{seeded.key_sop_uid}",
        "/api/worklist",
        f"/api/studies/{uid}",
        "/api/session",
    ]


def test_healthz_needs_no_login_and_shows_no_patient_data(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}
    assert not any(p in response.text for p in PHI)


def test_metrics_are_served_from_the_given_registry(seeded: Seeded, config: Config, clock: Clock) -> None:
    registry = CollectorRegistry()
    Counter("triage_node_test_events", "events", registry=registry).inc(3)
    ctx = WebContext(
        config=config, sessions=seeded.sessions, spool_dir=seeded.spool_dir, metrics_registry=registry, clock=clock
    )
    with TestClient(create_app(ctx)) as c:
        body = c.get("/metrics").text
    assert "triage_node_test_events_total 3.0" in body


def test_no_metrics_route_without_a_registry(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 404


def test_unauthenticated_requests_get_no_patient_data(client: TestClient, seeded: Seeded) -> None:
    for url in protected_urls(seeded):
        response = client.get(url)
        assert response.status_code in (303, 401), url
        assert not any(p in response.text for p in PHI), url
        if response.status_code == 303:
            assert response.headers["location"].startswith("/login?next=")
    for url in (f"/studies/{seeded.critical_uid}/ack", f"/api/studies/{seeded.critical_uid}/ack", "/logout"):
        assert client.post(url).status_code == 401, url


def test_forged_session_cookie_is_ignored(client: TestClient) -> None:
    client.cookies.set(SESSION_COOKIE, "W1wiZHIuYWx2YXJleiJd.forged")
    assert client.get("/api/worklist").status_code == 401


def test_login_sets_a_session_and_audits_it(client: TestClient, seeded: Seeded) -> None:
    login(client)
    response = client.get("/api/worklist")
    assert response.status_code == 200
    assert response.json()[0]["patient_id"] == PATIENT_ID
    cookie = next(c for c in client.cookies.jar if c.name == SESSION_COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly")
    with transaction(seeded.sessions) as s:
        actions = [(a.user, a.action) for a in s.scalars(select(AuditEntry))]
    assert (USER, "login") in actions


def test_wrong_password_is_refused_and_audited(client: TestClient, seeded: Seeded) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    response = client.post("/login", data={"username": USER, "password": "nope", "csrf_token": token.group(1)})
    assert response.status_code == 401
    assert "Wrong user name or password" in response.text
    assert client.get("/api/worklist").status_code == 401
    with transaction(seeded.sessions) as s:
        assert [(a.user, a.action) for a in s.scalars(select(AuditEntry))] == [(USER, "login_failed")]


def test_login_without_its_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/login")
    response = client.post("/login", data={"username": USER, "password": PASSWORD, "csrf_token": "guess"})
    assert response.status_code == 403
    assert client.get("/api/worklist").status_code == 401


def test_login_never_redirects_off_site(client: TestClient) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    response = client.post(
        "/login",
        data={"username": USER, "password": PASSWORD, "csrf_token": token.group(1), "next": "//evil.example/x"},
    )
    assert response.headers["location"] == "/"


def test_post_without_csrf_token_is_refused(client: TestClient, seeded: Seeded, csrf: str) -> None:
    uid = seeded.critical_uid
    assert client.post(f"/api/studies/{uid}/ack").status_code == 403
    assert client.post(f"/api/studies/{uid}/ack", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert client.post(f"/studies/{uid}/ack", data={"csrf_token": ""}).status_code == 403
    assert client.post("/logout").status_code == 403
    with transaction(seeded.sessions) as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        assert study.acknowledged_by is None


def test_session_times_out_when_idle(client: TestClient, clock: Clock) -> None:
    login(client)
    clock.advance(minutes=14)
    assert client.get("/api/worklist").status_code == 200  # activity: the idle timer restarts
    clock.advance(minutes=14)
    assert client.get("/").status_code == 200
    clock.advance(minutes=16)
    assert client.get("/api/worklist").status_code == 401
    assert client.get("/").headers["location"] == "/login?next=%2F"


def test_polling_does_not_keep_the_session_alive(client: TestClient, clock: Clock) -> None:
    login(client)
    for _ in range(4):
        clock.advance(minutes=5)
        response = client.get("/partials/worklist")
    assert response.status_code == 401  # 20 idle minutes of polling > 15-minute timeout


def test_logout_ends_the_session(client: TestClient, csrf: str) -> None:
    response = client.post("/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert client.get("/api/worklist").status_code == 401


def test_pages_carry_security_headers(client: TestClient, csrf: str) -> None:
    response = client.get("/")
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


@pytest.fixture
def proxy_client(seeded: Seeded, config: Config, clock: Clock) -> TestClient:
    proxied = config.model_copy(update={"web": config.web.model_copy(update={"auth": "proxy_header"})})
    ctx = WebContext(config=proxied, sessions=seeded.sessions, spool_dir=seeded.spool_dir, clock=clock)
    return TestClient(create_app(ctx), follow_redirects=False)


def test_proxy_header_mode_trusts_the_header_and_still_needs_csrf(proxy_client: TestClient, seeded: Seeded) -> None:
    assert proxy_client.get("/api/worklist").status_code == 401
    headers = {"X-Remote-User": "dr.proxy"}
    session = proxy_client.get("/api/session", headers=headers).json()
    assert session["user"] == "dr.proxy"
    uid = seeded.critical_uid
    assert proxy_client.post(f"/api/studies/{uid}/ack", headers=headers).status_code == 403
    ok = proxy_client.post(f"/api/studies/{uid}/ack", headers={**headers, "X-CSRF-Token": session["csrf_token"]})
    assert ok.status_code == 200
    assert ok.json()["acknowledged_by"] == "dr.proxy"
    # another user behind the proxy gets a session of their own, not the first one's
    assert proxy_client.get("/api/session", headers={"X-Remote-User": "dr.other"}).json()["user"] == "dr.other"


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/worklist", "/api/studies/{uid}", "/api/studies/{uid}/ack"} <= spec["paths"].keys()
    assert "StudyOut" in spec["components"]["schemas"]


def _try_login(client: TestClient, password: str) -> Response:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    return client.post("/login", data={"username": USER, "password": password, "csrf_token": token.group(1)})


def test_repeated_failed_logins_lock_the_user_out_for_a_while(
    client: TestClient, seeded: Seeded, clock: Clock, config: Config
) -> None:
    for _ in range(config.web.max_failed_logins):
        assert _try_login(client, "guess").status_code == 401
    locked = _try_login(client, PASSWORD)  # even the right password waits out the lockout
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) == config.web.lockout_min * 60
    assert "Too many failed attempts" in locked.text
    clock.advance(minutes=config.web.lockout_min)
    assert _try_login(client, PASSWORD).status_code == 303
    with transaction(seeded.sessions) as s:
        actions = [a.action for a in s.scalars(select(AuditEntry))]
    assert actions.count("login_failed") == config.web.max_failed_logins
    assert actions[-2:] == ["login_locked", "login"]


def test_a_successful_login_clears_earlier_failures(client: TestClient, config: Config) -> None:
    for _ in range(config.web.max_failed_logins - 1):
        assert _try_login(client, "guess").status_code == 401
    assert _try_login(client, PASSWORD).status_code == 303
    client.cookies.clear()  # logged out again
    for _ in range(config.web.max_failed_logins - 1):  # counting started again
        assert _try_login(client, "guess").status_code == 401
    assert _try_login(client, PASSWORD).status_code == 303
