"""The benchmark scenarios: each one a wrk script against the API and the pgbench scripts it mirrors."""

from dataclasses import dataclass

# The list scenario's page size, the same on every dataset size: a `large` user has 100 tasks and a
# `small` one 20, and with the API's default page (100) a large list would serialise five times the
# rows of a small one, which is not what the large/small comparison asks (does the table's size
# change the cost of a page?). wrk asks `?limit=` this; pgbench's list script has the same LIMIT.
LIST_PAGE_SIZE = 20

# The mixed workload: 70% reads. wrk (common.lua) and pgbench (-f script@weight) use these weights.
MIX: tuple[tuple[str, int], ...] = (("list", 40), ("get", 30), ("create", 10), ("toggle", 10), ("update", 10))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    pgbench_scripts: tuple[tuple[str, int], ...]
    # Each phase starts with a pool of tasks to delete (bench/deletable.py).
    deletes: bool = False

    @property
    def lua_script(self) -> str:
        return f"{self.name}.lua"


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("list", "GET /api/{user}/tasks?limit=20: first page, default sort", (("list", 1),)),
        Scenario("get", "GET /api/{user}/tasks/{id}", (("get", 1),)),
        Scenario("create", "POST /api/{user}/tasks with a title", (("create", 1),)),
        Scenario("toggle", "PATCH /api/{user}/tasks/{id}/complete with no body", (("toggle", 1),)),
        Scenario("update", "PUT /api/{user}/tasks/{id} with a new title", (("update", 1),)),
        Scenario("mixed", "all of the above, 70% reads", MIX),
        Scenario(
            "delete",
            "DELETE /api/{user}/tasks/{id}, a task no request took",
            (("delete", 1),),
            deletes=True,
        ),
    )
}
