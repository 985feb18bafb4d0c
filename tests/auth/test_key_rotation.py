"""Key rotation and outages: new keys are fetched once, random kids cannot flood the auth server,
and an unreachable JWKS endpoint neither stops the API nor breaks tokens signed by keys it holds."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from api.auth.errors import KeysUnavailable
from api.auth.jwks import JwksKeySet, UnknownKey
from api.db.listener import wake_tag
from tests.api.events_client import async_client, opened
from tests.auth.conftest import api_trusting, claims_for, get_tasks, user_with
from tests.auth.jwks_server import JwksServer, SigningKey, jwks_server
from tests.support import (
    ApiUser,
    assert_problem,
    better_auth_id,
    now,
    scrape,
    sessions_waiting_on_a_lock,
    sign,
    value,
    wait_until,
)

UNAVAILABLE = "todo_api_http_unavailable_total"


async def _eventually(condition: Callable[[], object], what: str) -> None:
    """`wait_until` for a scenario on an event loop, whose sleeps must let the refresher run."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"{what} (not within 10 s)"
        await asyncio.sleep(0.01)


async def _started(key_set: JwksKeySet) -> JwksKeySet:
    """Wait for the start-up fetch, after which the background refresher sleeps for its interval."""
    await _eventually(lambda: key_set.fetched, "the start-up fetch")
    return key_set


def test_a_new_key_is_accepted_after_one_refetch(api_db_url: str) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    with jwks_server(old) as server, api_trusting(api_db_url, server) as client:
        assert get_tasks(client, server, old).status_code == 200
        wait_until(
            lambda: server.fetch_count() == 1, "one fetch of the keys", 30
        )  # the start-up fetch, and no other

        server.publish(new)
        assert get_tasks(client, server, new).status_code == 200
        assert server.fetch_count() == 2
        assert get_tasks(client, server, new).status_code == 200
        assert get_tasks(client, server, old).status_code == 200
        assert server.fetch_count() == 2, "known keys need no fetch"


def test_a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown(api_db_url: str) -> None:
    key = SigningKey.generate()
    with jwks_server(key) as server, api_trusting(api_db_url, server) as client:
        assert get_tasks(client, server, key).status_code == 200
        wait_until(lambda: server.fetch_count() == 1, "one fetch of the keys", 30)

        # Issued a minute ago, so the set as fetched (then, or once more now) proves each kid unknown.
        strangers = [SigningKey.generate() for _ in range(20)]
        responses = [get_tasks(client, server, stranger, iat=now() - 60) for stranger in strangers]

        assert {response.status_code for response in responses} == {401}
        assert all("unknown kid" in response.json()["detail"] for response in responses)
        assert server.fetch_count() == 2, "one refetch for twenty unknown kids"

        # Signed after that fetch, so each may be signed by a key published since; none may make the
        # API fetch again within the cooldown.
        strangers = [SigningKey.generate() for _ in range(10)]
        responses = [get_tasks(client, server, stranger) for stranger in strangers]

        assert {response.status_code for response in responses} == {503}
        assert server.fetch_count() == 2, "no refetch within the cooldown"


def test_an_unknown_kid_on_a_token_its_own_claims_refuse_is_401_not_a_wait_for_a_new_key(
    api_db_url: str,
) -> None:
    """No key published since could admit a token issued, or valid from, further ahead than the
    leeway, expired, without the `exp` or `sub` every token needs, with a time that is no date, a
    `sub` that names no user, or another issuer or audience: a 503 would have anyone who sends an
    `iat` in the future make the API say it cannot authenticate (and count it as an outage), and its
    Retry-After would never help."""
    key = SigningKey.generate()
    with jwks_server(key) as server, api_trusting(api_db_url, server) as client:
        assert get_tasks(client, server, SigningKey.generate()).status_code == 401  # spends the refetch
        cause = {"cause": "authentication-unavailable"}
        counted = value(scrape(str(client.base_url)), UNAVAILABLE, **cause)

        for claims, detail in (
            ({"iat": now() + 3600}, "not valid yet"),
            ({"iat": now() + 100_000_000}, "not valid yet"),
            ({"nbf": now() + 3600}, "not valid yet"),
            ({"iat": now() - 7200, "exp": now() - 3600}, "expired"),
            ({"exp": ...}, "lacks the required 'exp' claim"),
            ({"sub": ...}, "lacks the required 'sub' claim"),
            ({"exp": "soon"}, "exp claim must be a number"),
            ({"exp": 1e308}, "exp claim must be a number"),
            ({"sub": ""}, "sub claim must be a user id"),
            ({"sub": 123}, "sub claim must be a user id"),
            ({"sub": "a/b"}, "one URL path segment"),
            ({"aud": "https://another.example"}, "was it issued by another Better Auth deployment?"),
            ({"iss": "https://another.example"}, "was it issued by another Better Auth deployment?"),
        ):
            response = get_tasks(client, server, SigningKey.generate(), **claims)
            assert detail in assert_problem(response, 401, "unauthorized")["detail"], claims

        # Within the leeway ahead, a key published since may still sign it: wait for that one.
        assert_problem(
            get_tasks(client, server, SigningKey.generate(), iat=now() + 10),
            503,
            "authentication-unavailable",
        )
        assert value(scrape(str(client.base_url)), UNAVAILABLE, **cause) == counted + 1
        assert server.fetch_count() == 2, "none of them fetched the keys again"


def test_a_key_published_within_the_cooldown_is_503_until_it_may_be_fetched_not_401(
    api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """A random kid just before a rotation spends the cooldown's one fetch; a good token signed by
    the new key must not be told it is bad (a 401 sends its user to sign in again)."""
    key = SigningKey.generate()
    with jwks_server(key) as server, api_trusting(api_db_url, server) as client:
        assert get_tasks(client, server, SigningKey.generate()).status_code == 401
        assert server.fetch_count() == 2
        no_iat = get_tasks(client, server, SigningKey.generate(), iat=...)
        assert no_iat.status_code == 401, "without an iat, a fetch within the cooldown is recent enough"

        rotated = SigningKey.generate()
        server.publish(rotated)
        user_id = better_auth_id()
        user = ApiUser(user_id, rotated.sign(claims_for(server.base_url, user_id)))
        cause = {"cause": "authentication-unavailable"}
        counted = value(scrape(str(client.base_url)), UNAVAILABLE, **cause)
        response = client.post(user.tasks_url, json={"title": "Signed by the new key"}, headers=user.headers)

        problem = assert_problem(response, 503, "authentication-unavailable")
        # Not the detail of a fetch that failed, which sent the operator to look for failures in a log
        # that had none (any client can name a kid nobody published).
        assert "did not publish when its keys were last fetched" in problem["detail"], problem
        assert "why each fetch failed" not in problem["detail"], problem
        # No warning names it (any client can send a kid), so the metric is how an operator sees it.
        assert value(scrape(str(client.base_url)), UNAVAILABLE, **cause) == counted + 1
        assert 1 <= int(response.headers["retry-after"]) <= 30, "when the cooldown lets a fetch through"
        assert api_db.execute("select count(*) from users where id = %s", [user_id]).fetchone() == (0,)
        # Signed now by an auth server whose clock is 20 s behind the API's, within JWT_LEEWAY_SECONDS:
        # its iat, before the last fetch, told the API the key would have been published then (a 401).
        behind_id = better_auth_id()
        behind = ApiUser(behind_id, rotated.sign(claims_for(server.base_url, behind_id, iat=now() - 20)))
        skewed = client.get(behind.tasks_url, headers=behind.headers)
        assert_problem(skewed, 503, "authentication-unavailable")
        assert server.fetch_count() == 2, "the cooldown still holds"


def test_a_fetch_is_judged_by_the_wall_clock_as_it_reads_now_after_a_step_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token signed after the last fetch may name a key published since, and waits for it (503),
    even once the API's wall clock has been stepped back (NTP) past that fetch: kept as the wall time
    it began at, the fetch looked newer than every token signed for as long as the step, and each was
    a 401 (the clock probe, /tmp/s77-clock: 600 s back, a rotation during a JWKS outage)."""

    async def scenario(server: JwksServer) -> tuple[bool, bool]:
        async with JwksKeySet(server.jwks_url, refetch_cooldown=30) as key_set:
            await _started(key_set)
            before_the_fetch = time.time() - 5
            stepped_back = time.time() - 600
            monkeypatch.setattr(time, "time", lambda: stepped_back)
            # Signed just now, on the clock everyone agrees on again: after the fetch, which the wall
            # clock now places 600 s ahead.
            signed_now = key_set.fetched_since(stepped_back)
            monkeypatch.undo()
            return signed_now, key_set.fetched_since(before_the_fetch)

    with jwks_server(SigningKey.generate()) as server:
        signed_now, signed_before = asyncio.run(scenario(server))
    assert signed_now is False, "a token signed after the fetch may name a key published since"
    assert signed_before is True, "a token signed before it names a key the fetch would have held"


def test_concurrent_unknown_kids_share_one_fetch() -> None:
    async def scenario(server: JwksServer) -> list[str]:
        async with JwksKeySet(server.jwks_url, refetch_cooldown=60, refresh_interval=3600) as key_set:
            await _started(key_set)
            results = await asyncio.gather(
                *(key_set.key(f"random-{n}") for n in range(50)), return_exceptions=True
            )
            return [type(result).__name__ for result in results]

    with jwks_server(SigningKey.generate()) as server:
        assert asyncio.run(scenario(server)) == ["UnknownKey"] * 50
        assert server.fetch_count() == 2  # start-up, then one refetch for fifty unknown kids


def test_the_cooldown_lets_a_refetch_through_once_it_has_passed() -> None:
    clock = [1000.0]
    late = SigningKey.generate()

    async def scenario(server: JwksServer) -> None:
        key_set = JwksKeySet(
            server.jwks_url, refetch_cooldown=30, refresh_interval=3600, clock=lambda: clock[0]
        )
        async with key_set:
            await _started(key_set)
            with pytest.raises(UnknownKey):
                await key_set.key("not-yet")
            fetches = server.fetch_count()
            assert fetches == 2
            server.publish(late)
            clock[0] += 29
            with pytest.raises(UnknownKey):
                await key_set.key(late.kid)
            assert server.fetch_count() == fetches
            clock[0] += 1
            assert (await key_set.key(late.kid)).algorithm_name == "EdDSA"
            assert server.fetch_count() == fetches + 1

    with jwks_server(SigningKey.generate()) as server:
        asyncio.run(scenario(server))


def test_known_keys_keep_working_while_the_jwks_endpoint_is_down(api_db_url: str) -> None:
    key, stranger = SigningKey.generate(), SigningKey.generate()
    with (
        jwks_server(key) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        assert get_tasks(client, server, key).status_code == 200
        claims_later = get_tasks(client, server, stranger, iat=now() + 20)
        assert claims_later.status_code == 401, "a fetch made after the token arrived proves its kid unknown"
        server.down = True

        # Fresh tokens each time, so the verified-token cache does not hide the key lookup.
        assert get_tasks(client, server, key).status_code == 200
        assert get_tasks(client, server, key, name="Someone else").status_code == 200
        unknown = get_tasks(client, server, stranger, iat=now() - 60)
        assert unknown.status_code == 401, "keys fetched since it was issued prove its kid unknown"
        assert "unknown kid" in unknown.json()["detail"]
        # Signed after the last fetch that worked, it may be signed by a key published since: the
        # refetch that would tell failed.
        maybe = get_tasks(client, server, stranger)
        assert_problem(maybe, 503, "authentication-unavailable")
        assert get_tasks(client, server, key).status_code == 200, "a failed refetch drops no key"


def test_a_failed_refresh_keeps_the_keys() -> None:
    key = SigningKey.generate()

    async def scenario(server: JwksServer) -> None:
        async with JwksKeySet(server.jwks_url, refetch_cooldown=0, refresh_interval=3600) as key_set:
            await _started(key_set)
            server.down = True
            assert not await key_set.refresh()
            assert (await key_set.key(key.kid)).algorithm_name == "EdDSA"

    with jwks_server(key) as server:
        asyncio.run(scenario(server))


def test_a_failed_refresh_is_tried_again_within_seconds_not_at_the_next_interval() -> None:
    """The refresher backs off from 1 s after a failure: waiting for the next interval (an hour) kept
    an auth server started after the API unfetched until a request asked, and after a blip a key
    withdrawn meanwhile verifying for up to an hour (the mutation probe's J03: no test held it)."""
    key = SigningKey.generate()

    async def scenario(server: JwksServer) -> None:
        server.down = True
        async with JwksKeySet(server.jwks_url, refetch_cooldown=3600, refresh_interval=3600) as key_set:
            await _eventually(lambda: server.fetch_count() >= 1, "the first refresh, which fails")
            assert not key_set.fetched
            server.down = False
            await _eventually(lambda: key_set.fetched, "a refresh after the failure, without a request")
            assert (await key_set.key(key.kid)).algorithm_name == "EdDSA"

    with jwks_server(key) as server:
        asyncio.run(scenario(server))


def test_a_key_dropped_from_the_set_stops_working_after_a_refresh() -> None:
    kept, dropped = SigningKey.generate(), SigningKey.generate()

    async def scenario(server: JwksServer) -> None:
        async with JwksKeySet(server.jwks_url, refetch_cooldown=3600, refresh_interval=3600) as key_set:
            await _started(key_set)
            await key_set.key(dropped.kid)
            server.keys.remove(dropped)
            assert await key_set.refresh()
            with pytest.raises(UnknownKey):
                await key_set.key(dropped.kid)
            await key_set.key(kept.kid)

    with jwks_server(kept, dropped) as server:
        asyncio.run(scenario(server))


def test_a_token_verified_before_its_key_was_withdrawn_is_refused_once_the_set_is_fetched(
    api_db_url: str,
) -> None:
    """The verified-token cache remembers a token only while its key is published: a withdrawn
    (perhaps leaked) key stops the tokens it signed, however far off their exp."""
    kept, withdrawn = SigningKey.generate(), SigningKey.generate()
    with (
        jwks_server(kept, withdrawn) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        user_id = better_auth_id()
        a_year = now() + 365 * 24 * 3600
        user = user_with(withdrawn.sign(claims_for(server.base_url, user_id, exp=a_year)), user_id)
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200

        server.keys.remove(withdrawn)
        # A token naming a key the API does not hold makes it fetch the set again.
        assert get_tasks(client, server, SigningKey.generate()).status_code == 401
        refused = client.get(user.tasks_url, headers=user.headers)
        assert refused.status_code == 401
        assert "does not publish" in refused.json()["detail"]
        assert get_tasks(client, server, kept).status_code == 200


@pytest.mark.parametrize(
    "woken_by", ["after the withdrawal", None], ids=["a change", "nothing but the fetch"]
)
def test_an_open_stream_ends_unread_once_its_tokens_key_is_withdrawn(
    api_db_url: str, api_db: psycopg.Connection[Any], woken_by: str | None
) -> None:
    """A stream outlives the verification that admitted it: it asks again before each read, and the
    fetch that finds the key gone wakes it to ask. Found with a real Better Auth: with no change of
    its user's to wake it, such a stream sent heartbeats until its token expired (Better Auth's last a
    quarter of an hour), holding one of its user's MAX_STREAMS_PER_USER."""
    kept, withdrawn = SigningKey.generate(), SigningKey.generate()
    with (
        jwks_server(kept, withdrawn) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        user_id = better_auth_id()
        user = ApiUser(user_id, withdrawn.sign(claims_for(server.base_url, user_id)))

        _assert_the_stream_ends_unread(
            client, server, api_db, user, lambda: server.keys.remove(withdrawn), woken_by
        )
        assert_problem(client.get(f"/api/{user_id}/events", headers=user.headers), 401, "unauthorized")


def test_a_key_fetched_again_unchanged_still_vouches_for_what_it_verified() -> None:
    """So the hourly refresh costs remembered tokens nothing: only a key that changed stops them."""
    key = SigningKey.generate()

    async def scenario(server: JwksServer) -> None:
        async with JwksKeySet(server.jwks_url, refetch_cooldown=3600, refresh_interval=3600) as key_set:
            await _started(key_set)
            verified_with = await key_set.key(key.kid)
            assert await key_set.refresh()
            assert key_set.publishes(key.kid, verified_with)
            server.keys[:] = [SigningKey.generate(kid=key.kid)]
            assert await key_set.refresh()
            assert not key_set.publishes(key.kid, verified_with)

    with jwks_server(key) as server:
        asyncio.run(scenario(server))


def test_a_remembered_token_is_refused_once_its_kid_names_another_key(
    api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """A kid is only a name: the auth server may withdraw a key and publish another under its kid.
    A token remembered as verified is trusted only while its kid still names the key that verified it."""
    withdrawn = SigningKey.generate()
    replacement = SigningKey.generate(kid=withdrawn.kid)
    with (
        jwks_server(withdrawn) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        user_id = better_auth_id()
        a_year = now() + 365 * 24 * 3600
        user = ApiUser(user_id, withdrawn.sign(claims_for(server.base_url, user_id, exp=a_year)))
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200

        server.keys[:] = [replacement]
        # A token naming a key the API does not hold makes it fetch the set again.
        assert get_tasks(client, server, SigningKey.generate()).status_code == 401
        refused = client.post(user.tasks_url, json={"title": "Signed by the old key"}, headers=user.headers)

        assert refused.status_code == 401
        assert "signature does not verify" in refused.json()["detail"]
        assert api_db.execute("select count(*) from users where id = %s", [user.id]).fetchone() == (0,)
        assert get_tasks(client, server, replacement).status_code == 200


def test_an_open_stream_ends_unread_once_its_kid_names_another_key(
    api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    withdrawn = SigningKey.generate()
    replacement = SigningKey.generate(kid=withdrawn.kid)
    with (
        jwks_server(withdrawn) as server,
        api_trusting(api_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
    ):
        user_id = better_auth_id()
        user = ApiUser(user_id, withdrawn.sign(claims_for(server.base_url, user_id)))

        def move_the_kid() -> None:
            server.keys[:] = [replacement]

        _assert_the_stream_ends_unread(client, server, api_db, user, move_the_kid, "after the kid moved")


def test_never_fetched_keys_mean_503_not_401_and_the_api_recovers(api_db_url: str) -> None:
    key = SigningKey.generate()
    with jwks_server(key) as server:
        server.down = True
        with api_trusting(api_db_url, server) as client:  # starts although the auth server is down
            response = get_tasks(client, server, key)

            problem = assert_problem(response, 503, "authentication-unavailable")
            # The start-up fetch still under way (its 5 s timeout), or one the token made, failed
            # (the cooldown until another may be made).
            assert response.headers["retry-after"] in {"5", "30"}
            assert problem["title"] == "Authentication unavailable"
            assert "why each fetch failed" in problem["detail"], problem

            # The shared secret does not depend on the JWKS at all.
            user_id = better_auth_id()
            hs256 = sign({"sub": user_id, "exp": now() + 60, "iss": server.base_url, "aud": server.base_url})
            user = user_with(hs256, user_id)
            assert client.get(user.tasks_url, headers=user.headers).status_code == 200

            server.down = False  # the background fetch retries within seconds
            wait_until(
                lambda: get_tasks(client, server, key).status_code == 200, "a token of the key is served", 30
            )


def test_never_fetched_keys_are_unavailable_at_the_key_set_level() -> None:
    """For as long as the cooldown keeps a token from making the key set fetch again: Retry-After said
    5 s here, and a client that asked again then was refused again until the cooldown ended."""

    async def scenario(server: JwksServer) -> None:
        async with JwksKeySet(server.jwks_url, refetch_cooldown=3600, refresh_interval=3600) as key_set:
            waits = []
            for _ in range(50):  # until a token makes a fetch itself, not the background refresher
                with pytest.raises(KeysUnavailable) as refused:
                    await key_set.key("any")
                waits.append(refused.value.retry_after_seconds)
                if waits[-1] > 5:
                    break
                await asyncio.sleep(0.05)
            assert not key_set.fetched
            assert 3590 <= waits[-1] <= 3600, waits
            with pytest.raises(KeysUnavailable) as again:
                await key_set.key("any")  # the cooldown holds: no fetch
            assert 3590 <= again.value.retry_after_seconds <= 3600

    with jwks_server() as server:
        server.down = True
        asyncio.run(scenario(server))


def test_a_stream_sends_nothing_it_read_after_its_tokens_key_was_withdrawn(migrated_db_url: str) -> None:
    """The stream asked before each read, not before sending what it read: a read already under way
    when the key was withdrawn sent a task written after the withdrawal (seen in CI, where the stream's
    first read ran late). Here the read waits on a lock while the key is withdrawn and the task
    written, so that it reads the task after the withdrawal. In a database of its own: the lock would
    stall the shared app's isolation check, and every request of the tests beside it, while it is held."""
    kept, withdrawn = SigningKey.generate(), SigningKey.generate()
    with (
        jwks_server(kept, withdrawn) as server,
        api_trusting(migrated_db_url, server, jwks_refetch_cooldown_seconds=0) as client,
        psycopg.connect(migrated_db_url) as writer,
        psycopg.connect(migrated_db_url, autocommit=True) as notifier,
    ):
        user_id = better_auth_id()
        user = ApiUser(user_id, withdrawn.sign(claims_for(server.base_url, user_id)))

        async def scenario() -> None:
            async with async_client(str(client.base_url)) as http, opened(http, user) as stream:
                await stream.opening_id()
                writer.execute("lock table task_events in access exclusive mode")
                notifier.execute("select pg_notify('task_events', %s)", [wake_tag(user_id)])
                wait_until(
                    lambda: sessions_waiting_on_a_lock(migrated_db_url) > 0, "the read waits on the lock", 30
                )
                server.keys.remove(withdrawn)
                assert get_tasks(client, server, SigningKey.generate()).status_code == 401
                writer.execute("insert into users (id) values (%s)", [user_id])
                writer.execute("insert into tasks (user_id, title) values (%s, 'read too late')", [user_id])
                writer.commit()
                rest = await stream.end()
                assert [block.data for block in rest if block.data] == []

        asyncio.run(scenario())


def _assert_the_stream_ends_unread(
    client: httpx.Client,
    server: JwksServer,
    api_db: psycopg.Connection[Any],
    user: ApiUser,
    change_keys: Callable[[], None],
    title: str | None,
) -> None:
    """Open `user`'s stream, change the published keys, and show the stream ends with nothing read:
    woken by a task titled `title` written by hand, or with None by nothing but the fetch."""

    async def scenario() -> None:
        async with async_client(str(client.base_url)) as http, opened(http, user) as stream:
            await stream.opening_id()
            change_keys()
            # A token naming a key the API does not hold makes it fetch the set again.
            assert get_tasks(client, server, SigningKey.generate()).status_code == 401
            if title is not None:  # a change by hand wakes the stream, whose token's key is now gone
                api_db.execute("insert into users (id) values (%s)", [user.id])
                api_db.execute("insert into tasks (user_id, title) values (%s, %s)", [user.id, title])
            rest = await stream.end()
            assert [block.data for block in rest if block.data] == []

    asyncio.run(scenario())
