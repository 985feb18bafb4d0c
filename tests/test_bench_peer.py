"""The peer bench.run measures the API against (bench/postgraphile/): not timed unless it keeps users
apart, checked against a real PostGraphile installed from the committed lock."""

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import api_server, dataset, postgraphile
from bench.postgraphile.isolation import PeerNotIsolatedError, check_isolation
from tests.support import SECRET


def test_the_peer_is_not_timed_when_it_takes_tokens_without_verifying_them(
    migrated_db_url: str, superuser_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgraphile.ensure_installed()  # npm ci from the lock into bench/postgraphile (git-ignored)
    # The peer as bench/postgraphile/server.js configures it, but reading the token unverified.
    trusting = tmp_path / "trusting-peer"
    trusting.mkdir()
    (trusting / "package.json").write_text((postgraphile.FOLDER / "package.json").read_text())
    (trusting / "node_modules").symlink_to(postgraphile.FOLDER / "node_modules")
    verifying = 'jwt.verify(token, secret, { algorithms: ["HS256"] })'
    server = postgraphile.SERVER_SCRIPT.read_text()
    assert verifying in server
    (trusting / "server.js").write_text(server.replace(verifying, "jwt.decode(token)"))
    monkeypatch.setitem(
        api_server.SERVERS,
        "trusting",
        ([str(postgraphile.NODE), str(trusting / "server.js")], postgraphile.ENVIRONMENT),
    )
    size = dataset.Size("tiny", users=2, tasks_per_user=3)
    # The suite's migrated database, served as the role that migrated it, as bench.run serves its own:
    # a Postgres of the test's own cost a start, the migrations and a stop for the same check.
    peer_superuser_url = make_conninfo(superuser_url, dbname=conninfo_to_dict(migrated_db_url)["dbname"])
    dataset.load(peer_superuser_url, size, progress=lambda _: None)

    for peer, isolates in (("postgraphile", True), ("trusting", False)):
        with api_server.running_api(
            migrated_db_url, SECRET, workers=1, run_dir=tmp_path, extra_env={}, server=peer
        ) as served:
            if isolates:
                check_isolation(served.base_url, SECRET, peer_superuser_url, size.tasks_per_user)
                continue
            with pytest.raises(PeerNotIsolatedError) as refused:
                check_isolation(served.base_url, SECRET, peer_superuser_url, size.tasks_per_user)

    found = str(refused.value)
    assert "a token for user 2 signed with another secret was answered 200" in found, found
    assert "a token for user 2 expired was answered 200" in found, found
