"""The users the load is spread over: the same ones for wrk and for pgbench.

`count` users spread evenly over the whole dataset (user 1, 1 + stride, 1 + 2 * stride, ...), so on
`large` the requests touch rows all over the table rather than its first few pages.
"""

from dataclasses import dataclass

from bench.dataset import Size


@dataclass(frozen=True)
class Sample:
    size: Size
    count: int

    @classmethod
    def of(cls, size: Size, requested: int) -> "Sample":
        return cls(size, max(1, min(requested, size.users)))

    @property
    def stride(self) -> int:
        return self.size.users // self.count

    def user_numbers(self) -> list[int]:
        return [1 + k * self.stride for k in range(self.count)]

    def pgbench_variables(self) -> dict[str, int]:
        return {"sample": self.count, "stride": self.stride, "tasks": self.size.tasks_per_user}
