"""The sort-key table is the one home of the list's sort keys; everything that names them agrees.
The longest cursor accepted is the longest the list can issue, in the spelling the schema names."""

import json
import re
from datetime import UTC, datetime
from typing import get_args

from api.tasks.listing import (
    COMPLETED_FOR_STATUS,
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    MAX_TASK_ID,
    SORT_KEYS,
    Cursor,
    SortKey,
    TaskListParams,
    TaskStatus,
)
from api.tasks.models import TITLE_MAX_LENGTH, TaskPublic


def test_the_sort_key_type_and_the_table_name_the_same_keys() -> None:
    assert set(get_args(SortKey)) == set(SORT_KEYS)


def test_the_documented_sort_keys_are_the_table() -> None:
    schema = TaskListParams.model_json_schema()["properties"]["sort"]
    assert set(schema["enum"]) == set(SORT_KEYS)


def test_every_sort_key_reads_a_field_every_listed_task_has() -> None:
    assert {spec.row_key for spec in SORT_KEYS.values()} <= set(TaskPublic.model_fields)


def test_every_status_has_its_filter() -> None:
    assert set(get_args(TaskStatus)) == set(COMPLETED_FOR_STATUS)


def test_the_longest_cursor_accepted_is_that_of_a_title_of_the_character_json_writes_longest() -> None:
    """Every character but NUL (refused in a title) and lone surrogates (not text Postgres stores)."""
    characters = (chr(code) for code in range(1, 0x110000) if not 0xD800 <= code <= 0xDFFF)
    widest = max(characters, key=lambda character: len(json.dumps(character, ensure_ascii=False).encode()))
    longest = Cursor("title", "desc", widest * TITLE_MAX_LENGTH, MAX_TASK_ID).encode()
    assert len(longest) == CURSOR_MAX_LENGTH
    # The other keys' values are timestamps, far shorter than such a title.
    latest = datetime.max.replace(tzinfo=UTC)
    assert all(
        len(Cursor(sort, "desc", latest, MAX_TASK_ID).encode()) < CURSOR_MAX_LENGTH for sort in SORT_KEYS
    )


def test_every_cursor_issued_is_spelled_as_the_schema_says_and_read_back() -> None:
    """The schema's pattern is what the list writes; each cursor it writes is the one it reads."""
    for title in ("", "??>", "~~~", "\x01\x7f", "漢字 a", "🙂" * 3, "".join(map(chr, range(1, 256)))):
        for length in range(len(title) + 1):  # every remainder of the base64, and so every end
            cursor = Cursor("title", "asc", title[:length], MAX_TASK_ID)
            issued = cursor.encode()
            assert re.fullmatch(CURSOR_PATTERN, issued), issued
            assert Cursor.decode(issued, sort="title", order="asc") == cursor
