"""The operator CLI: every command that reads the configuration takes --config; the light commands import no torch,
MONAI, model lab or web stack and start in under half a second; ``user`` manages logins without editing YAML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peers import ROOT

from triage_node.cli import build_parser

# SQLite only: the subject is the CLI's config (a sqlite URL relative to it) and its import cost
HEAVY = ("torch", "monai", "triage_lab", "fastapi", "uvicorn", "highdicom", "onnxruntime", "scipy", "alembic")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config next to its own database (relative paths: the file's folder)."""
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir()
    path.write_text("storage:\n  database_url: sqlite:///var/t.db\n  spool_dir: var/spool\n")
    return path


def _light_commands(conf: Path) -> list[list[str]]:
    c = str(conf)
    return [
        ["check-config", "--config", c],
        ["worklist", "--json", "--config", c],
        ["resend", "1", "--config", c],
        ["conformance"],
        ["user", "list", "--config", c],
    ]


def _cli(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage_node.cli", *args],
        capture_output=True, text=True, input=stdin, cwd=cwd, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_NODE__")},
    )


def test_every_command_that_reads_the_configuration_takes_config() -> None:
    parser = build_parser()
    for argv in (
        ["serve"], ["check-config"], ["worklist"], ["resend", "1"], ["models"],
        ["user", "add", "x"], ["user", "passwd", "x"], ["user", "remove", "x"], ["user", "list"],
    ):
        assert parser.parse_args([*argv, "--config", "c.yaml"]).config == "c.yaml", argv
    # before the action too: `triage-node user --config c.yaml add NAME`
    assert parser.parse_args(["user", "--config", "c.yaml", "add", "x"]).config == "c.yaml"


def test_light_commands_import_no_torch_monai_lab_or_web_stack(conf: Path) -> None:
    _cli("worklist", "--config", str(conf))  # creates the database, so every command below takes its light path
    code = (
        "import io, json, sys, contextlib\n"
        "from triage_node.cli import main\n"
        "out = {}\n"
        f"for argv in {json.dumps(_light_commands(conf))}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        rc = main(argv)\n"
        "    out[argv[0]] = rc\n"
        f"out['heavy'] = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.pop("heavy") == []
    assert out == {"check-config": 0, "worklist": 0, "resend": 1, "conformance": 0, "user": 0}


def test_user_add_stores_an_argon2_hash_in_the_database_and_refuses_duplicates(conf: Path, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    added = _cli("user", "add", "dr.new", "--password-stdin", "--config", str(conf), stdin="correct horse\n",
                 cwd=tmp_path)  # from another folder: the config's relative database path still holds
    assert added.returncode == 0, added.stderr
    assert "user dr.new added" in added.stdout
    engine = create_engine(f"sqlite:///{conf.parent / 'var/t.db'}")
    with engine.connect() as c:
        [(name, digest)] = c.execute(text("select name, password_hash from web_users")).all()
    engine.dispose()
    assert name == "dr.new" and digest.startswith("$argon2id$") and "correct horse" not in digest
    from triage_node.users import verify

    assert verify(digest, "correct horse") and not verify(digest, "wrong")
    again = _cli("user", "add", "dr.new", "--password-stdin", "--config", str(conf), stdin="x\n")
    assert again.returncode == 1 and "exists" in again.stderr
    empty = _cli("user", "add", "dr.empty", "--password-stdin", "--config", str(conf), stdin="\n")
    assert empty.returncode == 1 and "must not be empty" in empty.stderr
    changed = _cli("user", "passwd", "dr.new", "--password-stdin", "--config", str(conf), stdin="new one\n")
    assert changed.returncode == 0, changed.stderr
    listed = _cli("user", "list", "--config", str(conf))
    assert listed.stdout.split()[:2] == ["dr.new", "database"]
    assert _cli("user", "remove", "dr.new", "--config", str(conf)).returncode == 0
    assert _cli("user", "remove", "dr.new", "--config", str(conf)).returncode == 1


def test_check_config_warns_when_a_model_runs_without_the_gate_its_card_was_tuned_behind(tmp_path: Path) -> None:
    """The shipped ct_segmenter's rule was tuned behind the ich flag: check-config names the missing gate and still
    calls the configuration valid (it is a choice, not an error)."""
    conf = tmp_path / "config.yaml"
    conf.write_text(f"models:\n  dir: {ROOT / 'models'}\n  gates: {{ct_segmenter: subdural}}\n")
    res = _cli("check-config", "--config", str(conf))
    assert res.returncode == 0, res.stderr
    assert "warning: model ct_segmenter: its post-processing was tuned to run only where 'any_hemorrhage'" in res.stderr
    assert "behind 'subdural'" in res.stderr
    assert "configuration is valid" in res.stdout
    conf.write_text(f"models:\n  dir: {ROOT / 'models'}\n")  # the default gates
    res = _cli("check-config", "--config", str(conf))
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr
