"""The scenarios of issue 5: each one a wrk script against the API and the pgbench scripts it mirrors."""

from dataclasses import dataclass

# The mixed workload: 70% reads. wrk (common.lua) and pgbench (-f script@weight) use these weights.
MIX: tuple[tuple[str, int], ...] = (("list", 40), ("get", 30), ("create", 10), ("toggle", 10), ("update", 10))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    pgbench_scripts: tuple[tuple[str, int], ...]

    @property
    def lua_script(self) -> str:
        return f"{self.name}.lua"


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("list", "GET /api/{user}/tasks: first page, default sort", (("list", 1),)),
        Scenario("get", "GET /api/{user}/tasks/{id}", (("get", 1),)),
        Scenario("create", "POST /api/{user}/tasks with a title", (("create", 1),)),
        Scenario("toggle", "PATCH /api/{user}/tasks/{id}/complete with no body", (("toggle", 1),)),
        Scenario("update", "PUT /api/{user}/tasks/{id} with a new title", (("update", 1),)),
        Scenario("mixed", "all of the above, 70% reads", MIX),
    )
}
