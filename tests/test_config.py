from __future__ import annotations

from pathlib import Path

import pytest

from triage_node.config import ConfigError, Pipeline, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_example_is_valid_and_equals_the_built_in_defaults_where_it_should() -> None:
    cfg = load_config(ROOT / "config.yaml")
    defaults = load_config(None)
    assert cfg.scp == defaults.scp
    # The file's relative paths are relative to its folder (the defaults: to the working directory).
    assert cfg.storage == defaults.storage.model_copy(
        update={"spool_dir": ROOT / "var/spool", "database_url": f"sqlite:///{ROOT}/var/triage-node.db"}
    )
    assert cfg.models == defaults.models.model_copy(update={"dir": ROOT / "models"})
    assert [r.pipeline for r in cfg.series.rules] == [
        Pipeline.CT_HEAD,
        Pipeline.CT_HEAD,
        Pipeline.MR_SWI,
        Pipeline.MR_DWI,
    ]


def test_every_problem_is_reported_with_its_key_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "c.yaml"
    bad.write_text(
        "scp:\n  port: 70000\n  ae_title: THIS_TITLE_IS_TOO_LONG\n"
        "series:\n  rules:\n    - {name: a, pipeline: ct_head, match: {series_description: '('}}\n"
        "destinations:\n  - {name: p, ae_title: X, host: h, port: 0}\n"
        "colour: blue\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    problems = "\n".join(info.value.problems)
    assert "scp.port: must be between 1 and 65535, got 70000" in problems
    assert "scp.ae_title: must be 1-16 printable characters" in problems
    assert "series.rules.0.match.series_description: is not a valid regular expression" in problems
    assert "destinations.0.port: must be between 1 and 65535, got 0" in problems
    assert "colour: unknown key" in problems
    assert len(info.value.problems) == 5


def test_environment_overrides_the_file(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRIAGE_NODE__SCP__PORT", "11113")
    monkeypatch.setenv("TRIAGE_NODE__STORAGE__DATABASE_URL", "sqlite:////tmp/other.db")
    monkeypatch.setenv("TRIAGE_NODE__SCP__ALLOWED_CALLERS", '[{"ae_title": "PACS", "host": "10.0.0.5"}]')
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.scp.port == 11113
    assert cfg.scp.ae_title == "TRIAGE_NODE"  # the rest of the section still comes from the file
    assert cfg.storage.database_url == "sqlite:////tmp/other.db"
    assert cfg.scp.allowed_callers[0].host == "10.0.0.5"


def test_unreadable_and_non_mapping_files_are_clear(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(f)


def test_tls_needs_its_files() -> None:
    from triage_node.config import TLS

    with pytest.raises(ValueError, match="needs cert_file and key_file"):
        TLS(enabled=True)
    with pytest.raises(ValueError, match="needs ca_file"):
        TLS(enabled=True, cert_file=Path("c"), key_file=Path("k"), require_client_cert=True)


def test_relative_paths_in_a_file_resolve_against_its_folder_from_any_working_directory(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    etc = tmp_path / "etc" / "triage-node"
    etc.mkdir(parents=True)
    conf = etc / "config.yaml"
    conf.write_text(
        "storage:\n  spool_dir: var/spool\n  database_url: sqlite:///var/t.db?timeout=5\n"
        "models:\n  dir: ../models\n"
        "scp:\n  tls: {enabled: true, cert_file: tls/c.pem, key_file: /abs/k.pem, ca_file: tls/ca.pem}\n"
        "destinations:\n  - {name: p, ae_title: P, host: h, port: 104, tls: {cert_file: d.pem}}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("../etc/triage-node/config.yaml"))  # a relative --config works too
    assert cfg.storage.spool_dir == etc / "var/spool"
    assert cfg.storage.database_url == f"sqlite:///{etc}/var/t.db?timeout=5"
    assert cfg.models.dir == tmp_path / "etc" / "models"
    assert cfg.scp.tls.cert_file == etc / "tls/c.pem"
    assert cfg.scp.tls.key_file == Path("/abs/k.pem")
    assert cfg.scp.tls.ca_file == etc / "tls/ca.pem"
    assert cfg.destinations[0].tls.cert_file == etc / "d.pem"


def test_environment_paths_resolve_against_the_working_directory(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "conf" / "config.yaml"
    conf.parent.mkdir()
    conf.write_text("storage:\n  spool_dir: spool\nmodels:\n  dir: models\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRIAGE_NODE__STORAGE__SPOOL_DIR", "from-env/spool")
    monkeypatch.setenv("TRIAGE_NODE__STORAGE__DATABASE_URL", "sqlite:///from-env/t.db")
    cfg = load_config(conf)
    assert cfg.storage.spool_dir == Path("from-env/spool")  # relative: the working directory's
    assert cfg.storage.database_url == "sqlite:///from-env/t.db"
    assert cfg.models.dir == conf.parent / "models"  # not overridden: still the file's folder
    # other database URLs are never rewritten
    conf.write_text("storage:\n  database_url: postgresql+psycopg://u@db/triage\n")
    monkeypatch.delenv("TRIAGE_NODE__STORAGE__DATABASE_URL")
    assert load_config(conf).storage.database_url == "postgresql+psycopg://u@db/triage"
