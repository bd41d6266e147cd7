import pytest
from pydantic import ValidationError

from gateway._admission import endpoint_class
from gateway.auth import ApiKey, AuthConfig, KeyRing, hash_key, new_key
from gateway.limits import ConcurrencyLimiter


def _ring() -> tuple[KeyRing, str, str]:
    app_key, ops_key = new_key(), new_key()
    config = AuthConfig(
        keys=[
            ApiKey(name="app", sha256=hash_key(app_key)),
            ApiKey(name="ops", sha256=hash_key(ops_key), scopes=["admin"], max_concurrent=3),
        ]
    )
    return KeyRing(config), app_key, ops_key


def test_keys_resolve_to_their_names_and_scopes() -> None:
    ring, app_key, ops_key = _ring()
    app = ring.resolve(app_key)
    ops = ring.resolve(ops_key)
    assert app is not None and app.name == "app" and app.scopes == {"inference"}
    assert ops is not None and ops.name == "ops" and ops.scopes == {"admin"} and ops.max_concurrent == 3


def test_unknown_missing_and_near_miss_keys_are_refused() -> None:
    ring, app_key, _ = _ring()
    assert ring.resolve(None) is None
    assert ring.resolve("") is None
    assert ring.resolve(app_key[:-1]) is None
    assert ring.resolve(hash_key(app_key)) is None  # the digest is not a key


def test_no_keys_is_development_mode() -> None:
    ring = KeyRing(AuthConfig())
    anyone = ring.resolve(None)
    assert not ring.enabled
    assert anyone is not None and anyone.scopes == {"inference", "admin"}


def test_config_rejects_a_plain_key_duplicates_and_bad_names() -> None:
    key = new_key()
    with pytest.raises(ValidationError, match="digest"):
        ApiKey(name="app", sha256=key)
    with pytest.raises(ValidationError, match="unique"):
        AuthConfig(
            keys=[ApiKey(name="a", sha256=hash_key(key)), ApiKey(name="a", sha256=hash_key(new_key()))]
        )
    with pytest.raises(ValidationError, match="twice"):
        AuthConfig(keys=[ApiKey(name="a", sha256=hash_key(key)), ApiKey(name="b", sha256=hash_key(key))])
    with pytest.raises(ValidationError):
        ApiKey(name="has space", sha256=hash_key(key))


def test_new_keys_are_distinct_and_prefixed() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("dk-") and len(k) > 40 for k in keys)


@pytest.mark.parametrize(
    ("path", "public_metrics", "expected"),
    [
        ("/v1/completions", True, "inference"),
        ("/v1/models", True, "inference"),
        ("/admin/promote", True, "admin"),
        ("/admin", True, "admin"),
        ("/metrics", True, "public"),
        ("/metrics", False, "admin"),
        ("/healthz", True, "public"),
        ("/nope", True, "public"),
    ],
)
def test_endpoint_classes(path: str, public_metrics: bool, expected: str) -> None:
    assert endpoint_class(path, public_metrics=public_metrics) == expected


def test_limiter_sheds_globally_then_per_key_and_releases() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=3, default_per_key=2)
    assert limiter.try_acquire("a") == "admitted"
    assert limiter.try_acquire("a") == "admitted"
    assert limiter.try_acquire("a") == "rate_limited"
    assert limiter.try_acquire("b", key_limit=5) == "admitted"
    assert limiter.try_acquire("b", key_limit=5) == "overloaded"
    limiter.release("a")
    assert limiter.try_acquire("b", key_limit=5) == "admitted"
    for key in ("a", "b", "b"):
        limiter.release(key)
    assert limiter.in_flight == 0 and limiter.per_key == {}
