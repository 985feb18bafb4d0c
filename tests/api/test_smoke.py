import httpx

from tests.support import ApiUser


def test_create_then_list(client: httpx.Client, alice: ApiUser) -> None:
    created = client.post(alice.tasks_url, json={"title": "Buy milk"}, headers=alice.headers)
    assert created.status_code == 201, created.text
    listed = client.get(alice.tasks_url, headers=alice.headers)
    assert listed.status_code == 200
    assert [task["title"] for task in listed.json()] == ["Buy milk"]
