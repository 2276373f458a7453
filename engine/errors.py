"""The project's own error types. Every message names what is wrong and, where it applies, the
node id, the node type and the input."""

from __future__ import annotations

from dataclasses import dataclass


class LoomError(Exception):
    """Base class of every error Loom raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (node, type, input) and what is wrong."""

    code: str
    message: str
    node_id: str | None = None
    node_type: str | None = None
    input: str | None = None

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node '{self.node_id}'")
        if self.node_type:
            where.append(f"({self.node_type})")
        if self.input:
            where.append(f"input '{self.input}'")
        prefix = " ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ValidationError(LoomError):
    """A graph that cannot run; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"the graph has {len(self.problems)} problem(s):\n{lines}")


class WorkflowError(LoomError):
    """A workflow file that cannot be read: names the file and where in it the problem is."""

    def __init__(self, message: str, path: str | None = None, where: str | None = None):
        self.path = path
        self.where = where
        parts = [p for p in (path, where) if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)


class NodeError(LoomError):
    """A node failed while running; carries the node, the original message and the traceback."""

    def __init__(self, node_id: str, node_type: str, message: str, traceback: str = "",
                 input: str | None = None):
        self.node_id = node_id
        self.node_type = node_type
        self.message = message
        self.traceback = traceback
        self.input = input
        super().__init__(f"node '{node_id}' ({node_type}) failed: {message}")


class NodeInputError(LoomError):
    """Raised by a node's run() for a bad input value it can only detect at run time."""

    def __init__(self, input: str, message: str):
        self.input = input
        super().__init__(f"input '{input}': {message}")


class Cancelled(LoomError):
    """The run was cancelled; raised inside a node by `RunContext.check_cancelled()`."""

    def __init__(self) -> None:
        super().__init__("cancelled")
