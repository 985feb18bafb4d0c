"""The sort-key table is the one home of the list's sort keys; everything that names them agrees."""

from typing import get_args

from api.tasks.listing import COMPLETED_FOR_STATUS, SORT_KEYS, SortKey, TaskListParams, TaskStatus
from api.tasks.models import TaskPublic


def test_the_sort_key_type_and_the_table_name_the_same_keys() -> None:
    assert set(get_args(SortKey)) == set(SORT_KEYS)


def test_the_documented_sort_keys_are_the_table() -> None:
    schema = TaskListParams.model_json_schema()["properties"]["sort"]
    assert set(schema["enum"]) == set(SORT_KEYS)


def test_every_sort_key_reads_a_field_every_listed_task_has() -> None:
    assert {spec.row_key for spec in SORT_KEYS.values()} <= set(TaskPublic.model_fields)


def test_every_status_has_its_filter() -> None:
    assert set(get_args(TaskStatus)) == set(COMPLETED_FOR_STATUS)
