import pytest

from distillery.settings import CONFIG_FILE_ENV, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("DISTILLERY_"):
            monkeypatch.delenv(key)


def test_precedence_cli_over_env_over_yaml_over_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "d.yaml"
    cfg.write_text(
        "server:\n  port: 7000\n  host: 0.0.0.0\ncascade:\n  threshold: 0.7\n  scorer: min_logprob\n"
    )
    monkeypatch.setenv("DISTILLERY_CASCADE__THRESHOLD", "0.5")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(cfg))
    s = load_settings(server={"port": 9000})
    assert s.server.port == 9000  # CLI
    assert s.cascade.threshold == 0.5  # env beats YAML
    assert s.cascade.scorer == "min_logprob"  # YAML beats default
    assert s.server.host == "0.0.0.0"  # YAML, sibling of a CLI override kept
    assert s.server.max_tokens_limit == 256  # default


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("DISTILLERY_CASCADE__SCORER", "vibes")
    with pytest.raises(ValueError):
        load_settings()


def test_remote_teacher_needs_url(monkeypatch):
    monkeypatch.setenv("DISTILLERY_TEACHER__KIND", "openai")
    with pytest.raises(ValueError, match="base_url"):
        load_settings()


def test_missing_config_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError):
        load_settings()


def test_tier_dirs_default_under_models_dir(tmp_path):
    s = load_settings(models_dir=str(tmp_path))
    assert s.tier_dir("student") == tmp_path / "student"
    assert s.tier_dir("teacher") == tmp_path / "teacher"


def test_the_control_store_is_files_unless_the_feedback_database_is_postgres(tmp_path):
    from deploy import FileControlStore

    settings = load_settings(var_dir=tmp_path)
    assert settings.control_dsn is None
    assert isinstance(settings.open_registry().control, FileControlStore)
    with pytest.raises(ValueError, match=r"control_store: database .* postgresql://"):
        load_settings(var_dir=tmp_path, control_store="database")
    pg = load_settings(
        var_dir=tmp_path, control_store="database", feedback={"store_dsn": "postgresql://db/distillery"}
    )
    assert pg.control_dsn == "postgresql://db/distillery"
    with pytest.raises(ValueError, match="control_scope"):
        load_settings(var_dir=tmp_path, control_scope="a b/../c")
