"""``triage-node``, the operator commands.

serve | check-config | worklist | resend | user | models | conformance | hash-password. Model development (synthesis,
training, evaluation, export) is the separate ``triage-lab`` command (package triage_lab).

Every command that reads the configuration takes ``--config``. The light ones (check-config, worklist, resend, user,
conformance) import neither torch nor MONAI nor the web stack: each command imports what it uses, inside its
function, so they start in well under half a second (tests/test_cli.py measures it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

from triage_node import __version__
from triage_node.config import Config, ConfigError, load_config

log = logging.getLogger("triage_node.cli")


def _config(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None)
    return load_config(Path(path) if path else None)


def cmd_serve(args: argparse.Namespace) -> int:
    from triage_node.daemon import App, parse_roles
    from triage_node.inference.errors import ModelLoadError
    from triage_node.ops.logs import setup_logging
    from triage_node.worklist.claims import SpoolMismatch

    try:
        roles = parse_roles(args.roles)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    cfg = _config(args)
    setup_logging(cfg.logging)
    app = App(cfg, Path(args.config) if getattr(args, "config", None) else None, roles=roles)
    app.install_signal_handlers()
    try:
        app.start()
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        app.shutdown(timeout_s=5)
        return 3
    except SpoolMismatch as exc:
        log.error("cannot start: %s", exc)
        app.shutdown(timeout_s=5)
        return 5
    except OSError as exc:
        log.error("cannot start: %s", exc)
        app.shutdown(timeout_s=5)
        return 4
    app.run()
    # Stopped: associations ended, the job and the outbox at rest, the database disposed, the log written. Tearing
    # the interpreter down (torch, MONAI, their native libraries) would only add 0.5-1.5 s to every stop.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    from triage_node.inference.external import external_names

    names = sorted({n for names in cfg.models.pipelines.values() for n in names})
    external = external_names(Path(cfg.models.dir), names)
    if external:  # models from outside: load and run each once (imports torch only when there is one)
        from triage_node.inference.registry import check_models

        m = cfg.models
        problems = check_models(Path(m.dir), external, m.pipelines, m.threads, m.device, m.precision)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s) found", file=sys.stderr)
            return 1
    for line in _gate_warnings(cfg, names):
        print(f"warning: {line}", file=sys.stderr)
    print(
        f"configuration is valid: AE {cfg.scp.ae_title} on {cfg.scp.host}:{cfg.scp.port}, "
        f"{len(cfg.series.rules)} routing rule(s), {len(cfg.destinations)} destination(s)"
        + (f", external model(s) {', '.join(external)} loaded and run once" if external else "")
    )
    return 0


def _gate_warnings(cfg: Config, names: list[str]) -> list[str]:
    """The models.gates a card asks for and the configuration does not give (cards only: no torch)."""
    from triage_node.inference.card import CardError, ModelCard, gate_warnings

    cards = {}
    for name in names:
        path = Path(cfg.models.dir) / name / "model.yaml"
        try:
            cards[name] = ModelCard.load(path)
        except (CardError, OSError):
            continue  # a missing or broken card is `models --check`'s and serve's to report
    return gate_warnings(cards, cfg.models.gates)


def _sessions(cfg: Config):  # type: ignore[no-untyped-def]
    from triage_node.worklist.db import make_engine, migrate, session_factory

    engine = make_engine(cfg.storage.database_url)
    migrate(engine)
    return session_factory(engine)


def cmd_worklist(args: argparse.Namespace) -> int:
    from triage_node.worklist.queries import format_table, worklist

    cfg = _config(args)
    with _sessions(cfg)() as s:
        rows = worklist(s, priority=args.priority, modality=args.modality, state=args.state)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(format_table(rows))
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    from triage_node.send.outbox import resend
    from triage_node.worklist.db import transaction

    cfg = _config(args)
    with transaction(_sessions(cfg)) as s:
        n = resend(s, args.job, dt.datetime.now(dt.UTC))
    if n == 0:
        print(f"job {args.job}: nothing to resend (no such job or no result objects)", file=sys.stderr)
        return 1
    print(f"job {args.job}: {n} object(s) queued for delivery; the running daemon sends them within seconds")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from triage_node.inference.external import sha256_path
    from triage_node.inference.registry import check_models, list_models

    if args.hash is not None:  # the sha256 a card of a model from outside needs (a file, or a bundle folder)
        print(sha256_path(args.hash))
        return 0
    cfg = _config(args) if args.check or args.models_dir is None else None
    models_dir = args.models_dir if args.models_dir is not None else Path(cfg.models.dir)  # type: ignore[union-attr]
    rows = list_models(models_dir)
    if not rows:
        print(f"no models in {models_dir}")
        return 1
    bad = 0
    for r in rows:
        detail = r.detail
        if args.check and r.status == "ok":  # load it as the daemon would; a model from outside runs once
            assert cfg is not None
            m = cfg.models
            problems = check_models(models_dir, [r.name], {}, m.threads, m.device, m.precision)
            detail += "; " + ("; ".join(problems) if problems else "loaded and run on a synthetic input")
            bad += bool(problems)
        print(f"{r.name:16s} {r.version:8s} {r.status:10s} {r.device_uid}  {detail}")
        bad += r.status != "ok"
    return 1 if bad else 0


def cmd_conformance(args: argparse.Namespace) -> int:
    from triage_node.ops.conformance import main as conformance_main

    argv = ["--output", args.output] if args.output else ["--check", args.check] if args.check else []
    return conformance_main(argv)


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from triage_node.users import hash_password

    pw = args.password if args.password is not None else getpass.getpass("password: ")
    print(hash_password(pw))
    return 0


def _read_password(args: argparse.Namespace) -> str | None:
    """The new password: one line from stdin with --password-stdin, else asked twice on the terminal."""
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        print("the two passwords differ; nothing changed", file=sys.stderr)
        return None
    return first


def cmd_user(args: argparse.Namespace) -> int:
    from triage_node.users import UserError, add_user, hash_password, list_users, remove_user, set_password
    from triage_node.worklist.db import transaction

    cfg = _config(args)
    now = dt.datetime.now(dt.UTC)
    sessions = _sessions(cfg)
    try:
        if args.action == "list":
            with sessions() as s:
                rows = list_users(s, cfg.web.users)
            for r in rows:
                since = r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "-"
                print(f"{r.name:32s} {r.source:8s} {since}")
            if not rows:
                print("no users (add one with: triage-node user add NAME)", file=sys.stderr)
            return 0
        if args.action == "remove":
            with transaction(sessions) as s:
                remove_user(s, args.name)
            print(f"user {args.name} removed; the running daemon refuses new logins at once "
                  "(sessions already open end at their idle timeout)")
            return 0
        if any(u.name == args.name for u in cfg.web.users):
            raise UserError(f"user {args.name!r} is listed in web.users of the config file; change it there")
        password = _read_password(args)
        if password is None:
            return 1
        try:
            digest = hash_password(password)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        with transaction(sessions) as s:
            if args.action == "add":
                add_user(s, args.name, digest, now)
            else:
                set_password(s, args.name, digest, now)
    except UserError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    done = "added" if args.action == "add" else "password changed"
    print(f"user {args.name} {done} (argon2id hash in the web_users table of {_where(cfg)}); "
          "the running daemon accepts it at once")
    if cfg.web.auth != "password":
        print(f"note: web.auth is {cfg.web.auth!r}, so the page does not ask for passwords", file=sys.stderr)
    return 0


def _where(cfg: Config) -> str:
    from sqlalchemy.engine import make_url

    return make_url(cfg.storage.database_url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triage-node", description=__doc__)
    p.add_argument("--version", action="version", version=f"triage-node {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--config", "-c", default=argparse.SUPPRESS, help="config.yaml (default: built-in defaults)"
        )
        return sp

    sp = with_config(sub.add_parser("serve", help="run the daemon in the foreground (logs to stderr)"))
    sp.add_argument(
        "--roles",
        default="receive,work,send,web",
        help="what this process does, any of receive,work,send,web (default: all, the single node); processes "
        "with other roles share the database (PostgreSQL) and the spool",
    )
    sp.set_defaults(func=cmd_serve)
    sp = with_config(sub.add_parser("check-config", help="validate the configuration, print every problem"))
    sp.set_defaults(func=cmd_check_config)
    sp = with_config(sub.add_parser("worklist", help="print the worklist as a table or JSON"))
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--priority", choices=["critical", "urgent", "routine", "none"])
    sp.add_argument("--modality")
    sp.add_argument("--state")
    sp.set_defaults(func=cmd_worklist)
    sp = with_config(sub.add_parser("resend", help="queue a job's SEG/SR for delivery again (dead letters too)"))
    sp.add_argument("job", type=int)
    sp.set_defaults(func=cmd_resend)
    sp = sub.add_parser(
        "conformance",
        help="print (--output FILE: write, --check FILE: verify) the DICOM conformance "
        "statement, rendered from the code's own lists",
    )
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--output", help="write the statement to FILE (atomically)")
    group.add_argument("--check", help="exit 1 when FILE differs from the rendered statement")
    sp.set_defaults(func=cmd_conformance)
    sp = sub.add_parser("hash-password", help="print an argon2 hash for web.users[].password_hash")
    sp.add_argument("--password", help="read from the terminal when omitted")
    sp.set_defaults(func=cmd_hash_password)

    sp = with_config(
        sub.add_parser(
            "user",
            help="web logins: add | passwd | remove | list (argon2id hashes in the database; the running daemon "
            "applies a change at once)",
        )
    )
    sp.set_defaults(func=cmd_user)
    actions = sp.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a user (asks for the password)"), ("passwd", "set a user's password")):
        ap = with_config(actions.add_parser(action, help=text))
        ap.add_argument("name")
        ap.add_argument(
            "--password-stdin", action="store_true", help="read the password from the first line of stdin"
        )
    ap = with_config(actions.add_parser("remove", help="remove a user"))
    ap.add_argument("name")
    with_config(actions.add_parser("list", help="list users (config file and database)"))

    sp = with_config(sub.add_parser("models", help="list installed models with version and sha256 check"))
    sp.add_argument("--models-dir", type=Path, default=None, help="default: models.dir of the configuration")
    sp.add_argument("--check", action="store_true",
                    help="also load each model and run a model from outside once on a synthetic input")
    sp.add_argument("--hash", type=Path, default=None, metavar="PATH",
                    help="print the sha256 a card needs for a weights file or a MONAI bundle folder")
    sp.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
