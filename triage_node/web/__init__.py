"""The radiologists' worklist: web page, JSON API, login. ``create_app(WebContext(...))`` builds it."""

from triage_node.web.app import create_app
from triage_node.web.auth import hash_password, verify_password
from triage_node.web.context import WebContext

__all__ = ["WebContext", "create_app", "hash_password", "verify_password"]
