"""The task list: filters, search, sort orders and keyset paging through the Link header."""

import re
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from api.tasks.listing import CURSOR_MAX_LENGTH, MAX_TASK_ID, Cursor, SortOrder, TaskListParams
from api.tasks.models import TITLE_MAX_LENGTH
from tests.support import (
    SECRET,
    ApiUser,
    as_role,
    cli_env,
    explain_list,
    new_user,
    serve_command,
    serve_process,
    serving_client,
    settings_for,
)

_NEXT = re.compile(r'<([^>]+)>; rel="next"')


def seed(client: httpx.Client, user: ApiUser, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    created = []
    for fields in tasks:
        response = client.post(user.tasks_url, json=fields, headers=user.headers)
        assert response.status_code == 201
        created.append(response.json())
    return created


def titles(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()]


def all_pages(client: httpx.Client, user: ApiUser, **params: Any) -> tuple[list[str], int]:
    """Follow rel="next" links to the end; return every title and the number of pages."""
    response = client.get(user.tasks_url, params=params, headers=user.headers)
    seen, pages = titles(response), 1
    while match := _NEXT.search(response.headers.get("link", "")):
        response = client.get(match.group(1), headers=user.headers)
        seen += titles(response)
        pages += 1
    return seen, pages


@pytest.fixture
def carol(client: httpx.Client) -> ApiUser:
    user = new_user()
    seed(
        client,
        user,
        [
            {"title": "water the plants", "completed": True},
            {"title": "Buy MILK", "description": "and bread"},
            {"title": "call mum", "description": "about the 100% cotton_shirt"},
            {"title": "alpha", "completed": True},
        ],
    )
    return user


def test_default_is_everything_newest_first(client: httpx.Client, carol: ApiUser) -> None:
    response = client.get(carol.tasks_url, headers=carol.headers)
    assert titles(response) == ["alpha", "call mum", "Buy MILK", "water the plants"]
    assert "link" not in response.headers


@pytest.mark.parametrize(
    ("status", "expected"),
    [("all", 4), ("pending", 2), ("completed", 2)],
)
def test_status_filter(client: httpx.Client, carol: ApiUser, status: str, expected: int) -> None:
    response = client.get(carol.tasks_url, params={"status": status}, headers=carol.headers)
    tasks = response.json()
    assert len(tasks) == expected
    if status != "all":
        assert {task["completed"] for task in tasks} == {status == "completed"}


def test_an_empty_cursor_or_search_is_the_first_page_unfiltered(client: httpx.Client, carol: ApiUser) -> None:
    """The document admits an empty cursor, and a client generated from it sends `cursor=` for the
    empty string it holds before its first page: that was a 422, where an empty `q` is no search."""
    response = client.get(f"{carol.tasks_url}?cursor=&q=&limit=2", headers=carol.headers)
    assert response.status_code == 200, response.text
    assert titles(response) == ["alpha", "call mum"]
    assert "cursor=" in response.headers["link"]


def test_unknown_parameters_are_ignored_even_repeated(client: httpx.Client, carol: ApiUser) -> None:
    params = (("colour", "red"), ("status", "pending"), ("colour", "blue"))
    response = client.get(carol.tasks_url, params=params, headers=carol.headers)
    assert titles(response) == ["call mum", "Buy MILK"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("milk", ["Buy MILK"]),
        ("BREAD", ["Buy MILK"]),
        ("100%", ["call mum"]),
        ("l_m", []),  # as a LIKE wildcard, _ would match "call mum"
        ("_shirt", ["call mum"]),
        ("%", ["call mum"]),
        ("nothing like it", []),
    ],
)
def test_search_is_case_insensitive_and_literal(
    client: httpx.Client, carol: ApiUser, q: str, expected: list[str]
) -> None:
    assert titles(client.get(carol.tasks_url, params={"q": q}, headers=carol.headers)) == expected


# What the README says a search ignores, on a database of a UTF-8 locale (the suite's is C.UTF-8):
# the case of every letter that has a lowercase, one character at a time, and nothing else.
FULL_WIDTH_ABC = "\uff21\uff22\uff23"
WRITTEN_IN_MANY_LANGUAGES = ["ÉCLAIR", "Молоко", "ΟΔΟΣ", "Straße", FULL_WIDTH_ABC, "cafe\u0301"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("éclair", ["ÉCLAIR"]),
        ("МОЛОКО", ["Молоко"]),
        ("οδοσ", ["ΟΔΟΣ"]),
        ("STRAẞE", ["Straße"]),
        ("\uff41\uff42\uff43", [FULL_WIDTH_ABC]),
        ("CAFE\u0301", ["cafe\u0301"]),
        # Lowercased, not case-folded: ß stays ß, and SS is ss.
        ("STRASSE", []),
        # Characters as sent: neither the letter written with its accent (NFC) nor ASCII for full width.
        ("caf\u00e9", []),
        ("abc", []),
    ],
)
def test_search_ignores_the_case_of_letters_in_any_script_one_character_at_a_time(
    client: httpx.Client, q: str, expected: list[str]
) -> None:
    user = new_user()
    seed(client, user, [{"title": title} for title in WRITTEN_IN_MANY_LANGUAGES])
    assert titles(client.get(user.tasks_url, params={"q": q}, headers=user.headers)) == expected


@pytest.mark.parametrize(
    ("database", "lowercase_finds"),
    [("migrated_db_url", ["ÉCLAIR"]), ("c_locale_db_url", [])],
    ids=["C.UTF-8", "C"],
)
def test_serve_warns_when_its_database_ignores_the_case_of_ascii_letters_only(
    request: pytest.FixtureRequest, tmp_path: Path, database: str, lowercase_finds: list[str]
) -> None:
    """On a database of the C locale, lower() changes A to Z alone: a search ignores no other case,
    as the README says, and `serve` says so once as it starts."""
    url: str = request.getfixturevalue(database)
    env = cli_env(DATABASE_URL=as_role(url), BETTER_AUTH_SECRET=SECRET)
    user, log = new_user(), tmp_path / "serve.log"
    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=log) as (base_url, _):
        tasks_url = base_url + user.tasks_url
        for title in ("Buy MILK", "ÉCLAIR"):
            assert httpx.post(tasks_url, json={"title": title}, headers=user.headers).status_code == 201
        found = {
            q: titles(httpx.get(tasks_url, params={"q": q}, headers=user.headers))
            for q in ("milk", "ÉCLAIR", "éclair")
        }
    assert found == {"milk": ["Buy MILK"], "ÉCLAIR": ["ÉCLAIR"], "éclair": lowercase_finds}
    warnings = [line for line in log.read_text().splitlines() if "lowercases A to Z alone" in line]
    assert len(warnings) == (0 if lowercase_finds else 1), log.read_text()
    assert "otherwise than C.UTF-8" not in log.read_text()


@pytest.mark.parametrize(
    ("database", "title", "missed_by"),
    [("full_case_mapping_db_url", "ΟΔΟΣ", "οδοσ"), ("turkish_db_url", "TITLE", "title")],
    ids=["full-rules", "turkish"],
)
def test_serve_warns_when_its_database_lowercases_otherwise_than_c_utf8(
    request: pytest.FixtureRequest, tmp_path: Path, database: str, title: str, missed_by: str
) -> None:
    """ICU and Postgres 18's PG_UNICODE_FAST lowercase a final Σ to ς, so οδοσ does not find ΟΔΟΣ
    (the PG 18 probe of stop 83), and a Turkish locale I to a dotless i, so title does not find TITLE (its
    verification probe), unlike the README's one character at a time, and nothing said so."""
    url: str = request.getfixturevalue(database)
    env = cli_env(DATABASE_URL=as_role(url), BETTER_AUTH_SECRET=SECRET)
    user, log = new_user(), tmp_path / "serve.log"
    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=log) as (base_url, _):
        tasks_url = base_url + user.tasks_url
        assert httpx.post(tasks_url, json={"title": title}, headers=user.headers).status_code == 201
        found = {
            q: titles(httpx.get(tasks_url, params={"q": q}, headers=user.headers)) for q in (title, missed_by)
        }
    assert found == {title: [title], missed_by: []}
    warnings = [line for line in log.read_text().splitlines() if "otherwise than C.UTF-8" in line]
    assert len(warnings) == 1, log.read_text()
    assert f"{missed_by} does not find {title}" in warnings[0]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"sort": "title"}, ["Buy MILK", "alpha", "call mum", "water the plants"]),
        ({"sort": "title", "order": "desc"}, ["water the plants", "call mum", "alpha", "Buy MILK"]),
        ({"sort": "created", "order": "asc"}, ["water the plants", "Buy MILK", "call mum", "alpha"]),
    ],
)
def test_sort_orders(
    client: httpx.Client, carol: ApiUser, params: dict[str, str], expected: list[str]
) -> None:
    response = client.get(carol.tasks_url, params=params, headers=carol.headers)
    assert titles(response) == expected


# The README's order: by Unicode code point, so capitals before small letters and `é` after `z`. A
# language's collation (en_US.UTF-8, say) would list them "alpha, Buy MILK, éclair, Zebra, zoo".
UNSORTED_TITLES = ["zoo", "alpha", "éclair", "Zebra", "Buy MILK"]
BY_CODE_POINT = ["Buy MILK", "Zebra", "alpha", "zoo", "éclair"]


def assert_titles_are_listed_by_code_point(client: httpx.Client) -> None:
    """In both orders, on one page and across pages of two, whose cursors compare titles too."""
    assert sorted(UNSORTED_TITLES) == BY_CODE_POINT  # Python compares strings by code point
    user = new_user()
    seed(client, user, [{"title": title} for title in UNSORTED_TITLES])
    for order, expected in (("asc", BY_CODE_POINT), ("desc", BY_CODE_POINT[::-1])):
        params = {"sort": "title", "order": order}
        assert titles(client.get(user.tasks_url, params=params, headers=user.headers)) == expected, order
        assert all_pages(client, user, limit=2, **params) == (expected, 3), order


def test_titles_are_listed_by_code_point(client: httpx.Client) -> None:
    assert_titles_are_listed_by_code_point(client)


def test_titles_are_listed_by_code_point_whatever_the_databases_collation(linguistic_db_url: str) -> None:
    with psycopg.connect(linguistic_db_url) as db:
        sorted_by_default = db.execute(
            "select array_agg(title order by title) from unnest(%s::text[]) as title", [UNSORTED_TITLES]
        ).fetchone()
    # What this database's ORDER BY title gives by itself: the reviewer's "alpha, Buy MILK, Zebra".
    assert sorted_by_default == (["alpha", "Buy MILK", "éclair", "Zebra", "zoo"],)
    with serving_client(create_app(settings_for(as_role(linguistic_db_url)))) as client:
        assert_titles_are_listed_by_code_point(client)


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("paging", [False, True], ids=["first page", "next page"])
def test_listing_by_title_reads_the_users_tasks_in_order_from_an_index(
    migrated_db: psycopg.Connection[Any], order: SortOrder, paging: bool
) -> None:
    """A page costs what it lists, however many tasks the user has: no sort of all of them."""
    db = migrated_db
    db.autocommit = True
    owner = "t" * 32
    db.execute("insert into users (id) select 'user' || n from generate_series(1, 20) as n")
    db.execute("insert into users (id) values (%s)", [owner])
    db.execute(
        "insert into tasks (user_id, title) select %s, md5(n::text) from generate_series(1, 5000) as n",
        [owner],
    )
    db.execute(
        "insert into tasks (user_id, title) select 'user' || (n % 20 + 1), md5(n::text)"
        " from generate_series(1, 5000) as n"
    )
    db.execute("analyze tasks")
    cursor = Cursor("title", order, "8", 2500).encode() if paging else None
    params = TaskListParams.model_validate({"sort": "title", "order": order, "limit": 20, "cursor": cursor})

    plan = explain_list(db, owner, params)

    assert "Sort" not in plan, plan
    assert re.search(r"Index Scan (Backward )?using tasks_by_owner_title on tasks", plan), plan


def test_sort_by_updated_puts_the_latest_change_first(client: httpx.Client, carol: ApiUser) -> None:
    oldest = client.get(carol.tasks_url, params={"order": "asc"}, headers=carol.headers).json()[0]
    client.put(carol.task_url(oldest["id"]), json={"description": "changed"}, headers=carol.headers)
    response = client.get(carol.tasks_url, params={"sort": "updated"}, headers=carol.headers)
    assert titles(response)[0] == oldest["title"]


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "created"},
        {"sort": "created", "order": "asc"},
        {"sort": "updated"},
        {"sort": "title"},
        {"sort": "title", "order": "desc", "status": "pending"},
    ],
)
def test_paging_visits_every_task_once_in_order(client: httpx.Client, params: dict[str, str]) -> None:
    user = new_user()
    # Duplicate titles make the id tie-breaker matter.
    seed(client, user, [{"title": f"task {i % 4}", "completed": i % 3 == 0} for i in range(11)])
    unpaged = titles(client.get(user.tasks_url, params=params, headers=user.headers))

    paged, pages = all_pages(client, user, limit=3, **params)

    assert paged == unpaged
    assert pages == -(-len(unpaged) // 3)


def walk_changing_tasks_after_the_first_page(
    client: httpx.Client, user: ApiUser, change: Any, **params: Any
) -> list[str]:
    """Every title a walk lists, pages of three, with `change()` made once the first page is read."""
    response = client.get(user.tasks_url, params={**params, "limit": 3}, headers=user.headers)
    seen = titles(response)
    change()
    while match := _NEXT.search(response.headers.get("link", "")):
        response = client.get(match.group(1), headers=user.headers)
        seen += titles(response)
    return seen


def test_a_walk_lists_once_every_task_that_keeps_its_place_whatever_changes_meanwhile(
    client: httpx.Client,
) -> None:
    """README: pages are read when asked for, after the last task shown, not from a snapshot."""
    user = new_user()
    tasks = {task["title"]: task for task in seed(client, user, [{"title": f"a{i}"} for i in range(1, 10)])}

    def change() -> None:
        headers = user.headers
        client.put(user.task_url(tasks["a2"]["id"]), json={"title": "z2"}, headers=headers)  # past it
        client.put(user.task_url(tasks["a5"]["id"]), json={"title": "a0"}, headers=headers)  # behind it
        client.patch(user.task_url(tasks["a7"]["id"]) + "/complete", headers=headers)  # same title
        client.delete(user.task_url(tasks["a6"]["id"]), headers=headers)
        client.post(user.tasks_url, json={"title": "a55"}, headers=headers)

    walked = walk_changing_tasks_after_the_first_page(client, user, change, sort="title")

    # a2, listed on the first page, again as z2; a5, renamed a0, never; a6, deleted, never.
    assert walked == ["a1", "a2", "a3", "a4", "a55", "a7", "a8", "a9", "z2"]


def test_a_walk_by_update_in_ascending_order_lists_a_task_changed_meanwhile_again(
    client: httpx.Client,
) -> None:
    user = new_user()
    first, *_ = seed(client, user, [{"title": f"t{i}"} for i in range(1, 7)])

    def change() -> None:
        client.put(user.task_url(first["id"]), json={"title": "t1 again"}, headers=user.headers)

    walked = walk_changing_tasks_after_the_first_page(client, user, change, sort="updated", order="asc")

    assert walked == ["t1", "t2", "t3", "t4", "t5", "t6", "t1 again"]


# Titles whose cursors are long: JSON writes a control character in six bytes (\u0001), a quote or a
# backslash in two, any other character in its UTF-8 (up to four bytes), unless escaped as \uXXXX
# (six, twelve for an emoji), as the list's cursors once did.
LONG_TITLES = [
    "漢" * 71,
    "漢" * TITLE_MAX_LENGTH,
    "🙂" * TITLE_MAX_LENGTH,
    '"' * TITLE_MAX_LENGTH,
    "\\" * TITLE_MAX_LENGTH,
    "\x01" * TITLE_MAX_LENGTH,
    ('a\x01"\\\n漢🙂' * TITLE_MAX_LENGTH)[:TITLE_MAX_LENGTH],
]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_by_title_follows_every_link_whatever_the_titles(client: httpx.Client, order: str) -> None:
    user = new_user()
    seed(client, user, [{"title": title} for title in LONG_TITLES])
    listed = titles(
        client.get(user.tasks_url, params={"sort": "title", "order": order}, headers=user.headers)
    )
    assert sorted(listed) == sorted(LONG_TITLES)

    # One task a page, so that every title is some page's cursor; each page is asserted 200.
    paged, pages = all_pages(client, user, sort="title", order=order, limit=1)

    assert paged == listed
    assert pages == len(LONG_TITLES)


def test_the_longest_cursor_the_api_can_issue_is_accepted(client: httpx.Client) -> None:
    user = new_user()
    older = seed(client, user, [{"title": "\x01" * TITLE_MAX_LENGTH}])
    # After a task of the largest id and the longest title, sorted Z to A: the same title, an older id.
    cursor = Cursor("title", "desc", "\x01" * TITLE_MAX_LENGTH, MAX_TASK_ID).encode()
    assert len(cursor) == CURSOR_MAX_LENGTH

    response = client.get(
        user.tasks_url, params={"sort": "title", "order": "desc", "cursor": cursor}, headers=user.headers
    )

    assert response.status_code == 200, response.text
    assert response.json() == older


def test_next_link_keeps_the_other_parameters(client: httpx.Client) -> None:
    user = new_user()
    seed(client, user, [{"title": f"milk {i}"} for i in range(3)])
    response = client.get(
        user.tasks_url, params={"q": "milk", "limit": 2, "sort": "title"}, headers=user.headers
    )
    link = _NEXT.search(response.headers["link"])
    assert link is not None
    url = httpx.URL(link.group(1))
    assert url.path == user.tasks_url
    assert url.params["q"] == "milk"
    assert url.params["limit"] == "2"
    assert url.params["sort"] == "title"
    assert url.params["cursor"]


def test_default_page_size_is_100(client: httpx.Client) -> None:
    user = new_user()
    seed(client, user, [{"title": f"t{i}"} for i in range(101)])
    response = client.get(user.tasks_url, headers=user.headers)
    assert len(response.json()) == 100
    assert 'rel="next"' in response.headers["link"]


def test_every_listed_task_carries_the_version_in_its_etag(client: httpx.Client) -> None:
    """So a client that only listed can still send If-Match, and an edit made meanwhile is a 412."""
    dave = new_user()
    edited, untouched = seed(client, dave, [{"title": "edited"}, {"title": "untouched"}])
    client.put(dave.task_url(edited["id"]), json={"title": "edited twice"}, headers=dave.headers)

    listed = client.get(dave.tasks_url, headers=dave.headers).json()

    assert {task["id"]: task["version"] for task in listed} == {edited["id"]: 2, untouched["id"]: 1}
    for task in listed:
        single = client.get(dave.task_url(task["id"]), headers=dave.headers)
        assert single.json() == task
        assert single.headers["etag"] == f'"{task["id"]}.{task["version"]}"'
    stale = client.put(
        dave.task_url(edited["id"]),
        json={"title": "from a stale list"},
        headers={**dave.headers, "If-Match": f'"{edited["id"]}.{edited["version"]}"'},
    )
    assert stale.status_code == 412
