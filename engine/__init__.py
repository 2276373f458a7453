"""Loom's engine: node API, socket types, graph model, validation, executor, cache and workflow
files. Imports neither Qt nor torch: tensors and models are opaque values here."""

from engine.errors import (
    Cancelled,
    LoomError,
    NodeError,
    NodeInputError,
    Problem,
    ValidationError,
    WorkflowError,
)
from engine.graph import Edge, Graph, GraphError, GraphEvent, Link
from engine.node import REQUIRED, Input, NodeSpec, Output, RunContext, node
from engine.types import ANY, BOOLEAN, FLOAT, INT, STRING, TYPES

__all__ = [
    "ANY", "BOOLEAN", "FLOAT", "INT", "STRING", "TYPES", "REQUIRED",
    "Cancelled", "LoomError", "NodeError", "NodeInputError", "Problem", "ValidationError",
    "WorkflowError", "Edge", "Graph", "GraphError", "GraphEvent", "Link",
    "Input", "NodeSpec", "Output", "RunContext", "node",
]
