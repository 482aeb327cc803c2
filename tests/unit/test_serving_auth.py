"""serving/auth.py: API keys from the environment and a file, kept as digests; bearer tokens."""

from __future__ import annotations

import pytest

from embedforge.serving.auth import bearer_token, digest, key_is_valid, load_key_digests


def test_keys_from_env_and_file_are_kept_as_digests_and_only_they_are_valid(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# ops keys\nkey-b\n\nkey-c\n")
    digests = load_key_digests("MY_KEYS", str(f), environ={"MY_KEYS": "key-a, key-b"})
    assert digests == sorted({digest(k) for k in ("key-a", "key-b", "key-c")})
    assert all("key-" not in d for d in digests)
    assert key_is_valid("key-c", digests) and not key_is_valid("key-d", digests) and not key_is_valid(None, digests)
    assert load_key_digests("MY_KEYS", None, environ={}) == []
    with pytest.raises(FileNotFoundError, match="api_key_file"):
        load_key_digests(None, str(tmp_path / "missing"))
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None and bearer_token(None) is None
