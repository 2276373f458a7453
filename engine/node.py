"""The node API: declare a node type once, with typed inputs and outputs and a `run(ctx)` method.

    @node("sampling.cfg_combine", title="CFG Combine", category="sampling", version="1.0.0",
          outputs=[Output("denoiser", "DENOISER")])
    class CFGCombine:
        '''Push the prediction from the unconditional towards the conditional one.'''
        denoiser = Input("DENOISER")
        scale = Input(FLOAT, default=7.0, min=0.0, max=30.0, description="guidance scale")

        def run(self, ctx: RunContext):
            return make_guided(self.denoiser, self.scale)

The executor makes a fresh instance per run and sets every input as an attribute, so a node
keeps no hidden state between runs. `run` returns a dict keyed by output name, a tuple in output
order, or the bare value when there is exactly one output. Everything the editor and the CLI know
about a node type comes from this metadata (`NodeSpec`).

Pre-run checks. Validation checks each constant against its declared type and range; what only
the node knows (an output folder that is not writable, a size that would not fit in memory, a
prompt over the length limit, a model folder with a broken config) a node checks in an optional
classmethod `preflight`, which `Executor.submit` calls for every node the run needs, after
validation and before the first node runs:

        @classmethod
        def preflight(cls, values: dict, ctx: PreflightContext):
            if len(values.get("text", "")) > MAX_PROMPT_CHARS:
                yield "text", f"the prompt is over {MAX_PROMPT_CHARS} characters"

`values` holds the node's constant inputs (defaults filled in); inputs fed by a link are absent,
since their values are not known before the run. `ctx` (PreflightContext) gives the node id and
type, the run options (`ctx.options`, `ctx.output_dir`, `ctx.base_dir`, `ctx.device`) and
`ctx.resolve(value)`, which resolves a path input as `RunContext` users do. It returns or yields
(input_name, message) pairs (input_name None for the node as a whole), or None. Each becomes a
`Problem` (code "preflight", or a third item of the pair) naming the node id, type and input, and
`submit` raises them all at once as a ValidationError. A preflight must be quick (it runs on the
caller's thread, the editor's GUI thread included), must not change anything that outlives it,
and must not import torch (heavy checks belong in `run`). A preflight that raises is reported
as a problem of that node, never as a traceback. engine.preflight has shared checks (output
folders, file prefixes, available memory).

Files read by name. A path input (`Input(path=True)`) folds the file's identity into the node's
cache key. A node that reads files its inputs only name indirectly (a prompt's
`embedding:name`) says which in an optional classmethod `cache_identity(values, ctx)`, called
with the constant inputs and a PreflightContext whenever the key is computed: it returns a
value with a stable repr (a tuple of strings: the files' identities), folded into the key. It
must be quick and must not import torch; one that raises makes the node run again every time.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.types import BOOLEAN, FLOAT, INT, PRIMITIVES, STRING

# ASCII digits only, and fullmatch (not `$`, which also matches before a trailing newline)
_SEMVER = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})\.([0-9]{1,9})")
_TYPE_ID = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


LINKED = "<connected>"
"""In `Input.ignored_when`: the condition "that input is connected"."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def parse_semver(version: str) -> tuple[int, int, int]:
    m = _SEMVER.fullmatch(version) if isinstance(version, str) else None
    if not m:
        raise ValueError(f"not a semantic version (MAJOR.MINOR.PATCH): {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass
class Input:
    """A declared input. Constants are set in the node; `connection_only` inputs must be wired."""

    type: str
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    multiline: bool = False
    optional: bool = False
    connection_only: bool = False
    widget: str | None = None
    """Editor hint: "slider", "seed", "file", "folder", "image", "mask"; None picks by type."""
    file_filter: str | None = None
    path: bool = False
    """The value is a file or folder path: its content identity is folded into the cache key."""
    library: str | None = None
    """For a path: the kind of model it names ("checkpoints", "loras", "embeddings",
    "controlnet", "vae", "upscale_models"): a relative name is also looked up in the model
    library's folders of that kind (engine.library), the editor offers a list of them, and a
    saved workflow records the file's name and content hash so it is found on another machine."""
    description: str = ""
    label: str | None = None
    ignored_when: dict[str, Any] | None = None
    """When this input has no effect: {other input: LINKED} (that input is connected) or
    {other input: value} (it is set to that value); any one condition suffices. The editor greys
    the field out and the CLI warns when it is set, so a seed is never ignored invisibly."""
    name: str = ""

    def __post_init__(self) -> None:
        if self.choices is not None:
            self.choices = tuple(self.choices)
        if self.type not in PRIMITIVES and self.default is REQUIRED and not self.optional:
            self.connection_only = True
        if self.library is not None:
            from engine.library import KINDS

            if self.library not in KINDS:
                raise ValueError(f"unknown model library kind {self.library!r}; known: "
                                 f"{', '.join(KINDS)}")
            self.path = True

    @property
    def required(self) -> bool:
        return self.default is REQUIRED and not self.optional

    @property
    def has_default(self) -> bool:
        return self.default is not REQUIRED

    def check(self, value: Any) -> str | None:
        """Why `value` is not acceptable as a constant for this input, or None if it is."""
        problem = self.problem(value)
        return problem[1] if problem is not None else None

    def problem(self, value: Any) -> tuple[str, str] | None:
        """(code, message) of what is wrong with `value` as a constant, or None if it is fine.
        Codes: value_error, not_in_choices, out_of_range."""
        if value is None:
            return None if self.optional else ("value_error", "a value is required")
        t = self.type
        if t == INT:
            if isinstance(value, bool) or not isinstance(value, int):
                return "value_error", f"expected an integer, got {_describe(value)}"
        elif t == FLOAT:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return "value_error", f"expected a number, got {_describe(value)}"
            # ints are always finite (and math.isfinite overflows on huge ones)
            if isinstance(value, float) and not math.isfinite(value):
                return "value_error", f"expected a finite number, got {value!r}"
        elif t == STRING:
            if not isinstance(value, str):
                return "value_error", f"expected text, got {_describe(value)}"
        elif t == BOOLEAN:
            if not isinstance(value, bool):
                return "value_error", f"expected true or false, got {_describe(value)}"
        else:
            return "value_error", f"inputs of type {t} can only be connected, not set to a constant"
        if self.choices is not None and value not in self.choices:
            shown = ", ".join(repr(c) for c in self.choices)
            return "not_in_choices", f"{_short(value)} is not one of the choices: {shown}"
        if self.min is not None and value < self.min:
            return "out_of_range", f"{_short(value)} is below the minimum {self.min!r}"
        if self.max is not None and value > self.max:
            return "out_of_range", f"{_short(value)} is above the maximum {self.max!r}"
        return None

    def parse(self, text: str) -> Any:
        """Parse a command-line string by this input's declared type (ValueError if it can't)."""
        t = self.type
        if t == INT:
            text = text.strip()
            try:
                return int(text, 0)  # 0x10, 0b101, 1_000
            except ValueError:
                return int(text, 10)  # leading zeros ("007"), which base 0 refuses
        if t == FLOAT:
            value = float(text.strip())
            return value
        if t == BOOLEAN:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {text!r}")
        if t == STRING:
            return text
        raise ValueError(f"inputs of type {t} can only be connected, not set on the command line")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.has_default:
            d["default"] = self.default
        for key in ("min", "max", "step", "widget", "file_filter", "label", "library"):
            v = getattr(self, key)
            if v is not None:
                d[key] = v
        if self.choices is not None:
            d["choices"] = list(self.choices)
        for key in ("multiline", "optional", "connection_only", "path"):
            if getattr(self, key):
                d[key] = True
        if self.ignored_when:
            d["ignored_when"] = dict(self.ignored_when)
        if self.description:
            d["description"] = self.description
        return d


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _short(value: Any, limit: int = 80) -> str:
    """repr of a value for a message, cut short (a huge number or text would flood it)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**60:
        return f"<integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


@dataclass(frozen=True)
class Output:
    name: str
    type: str
    description: str = ""
    inputs: tuple[str, ...] | None = None
    """The inputs this output's value depends on (None: all of them). Nodes fed by this output
    are then keyed by these inputs only, so changing another input of the node re-runs the node
    but not what this output feeds (Load LoRA's CLIP does not depend on its model strength)."""

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "type": self.type}
        if self.description:
            d["description"] = self.description
        return d


Migration = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class NodeSpec:
    """Everything known about a node type, read by the engine, the editor and the CLI."""

    type_id: str
    cls: type
    title: str
    category: str
    version: str
    description: str
    inputs: dict[str, Input]
    outputs: list[Output]
    output_node: bool = False
    deterministic: bool = True
    migrations: dict[str, tuple[str, Migration]] = field(default_factory=dict)
    """from-version -> (to-version, function rewriting the node's inputs dict)."""

    def output(self, name: str) -> Output | None:
        return next((o for o in self.outputs if o.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type_id,
            "title": self.title,
            "category": self.category,
            "version": self.version,
            "description": self.description,
            "inputs": [i.to_json() for i in self.inputs.values()],
            "outputs": [o.to_json() for o in self.outputs],
            "output_node": self.output_node,
            "deterministic": self.deterministic,
        }

    def normalise_result(self, result: Any) -> dict[str, Any]:
        names = [o.name for o in self.outputs]
        if not names:
            return {}
        if isinstance(result, dict) and set(result) == set(names):
            return dict(result)
        if len(names) == 1:
            return {names[0]: result}
        if isinstance(result, tuple) and len(result) == len(names):
            return dict(zip(names, result, strict=True))
        raise TypeError(
            f"run() of {self.type_id} must return a dict with keys {names} or a tuple of "
            f"{len(names)} values, got {type(result).__name__}"
        )


def node(
    type_id: str,
    *,
    title: str,
    category: str,
    version: str,
    outputs: list[Output] | tuple[Output, ...] = (),
    output_node: bool = False,
    deterministic: bool = True,
    description: str | None = None,
    migrations: dict[str, tuple[str, Migration]] | None = None,
) -> Callable[[type], type]:
    """Class decorator declaring a node type; the registry picks it up when it imports the
    module."""
    if not isinstance(type_id, str) or not _TYPE_ID.fullmatch(type_id):
        raise ValueError(f"node type id must look like 'family.name', got {type_id!r}")
    parse_semver(version)

    def wrap(cls: type) -> type:
        inputs: dict[str, Input] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Input):
                    value.name = name
                    inputs[name] = value
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{type_id}: duplicate output names {names}")
        for o in outputs:
            unknown = [i for i in (o.inputs or ()) if i not in inputs]
            if unknown:
                raise ValueError(f"{type_id}: output {o.name!r} depends on unknown inputs "
                                 f"{unknown}")
        if not callable(getattr(cls, "run", None)):
            raise TypeError(f"{type_id}: a node class needs a run(self, ctx) method")
        for hook_name in ("preflight", "cache_identity"):
            hook = inspect.getattr_static(cls, hook_name, None)
            if hook is not None and not isinstance(hook, (classmethod, staticmethod)):
                raise TypeError(f"{type_id}: {hook_name} must be a classmethod "
                                f"(@classmethod def {hook_name}(cls, values, ctx))")
        # cleandoc: the editor shows the text, so drop the docstring's source indentation
        doc = description if description is not None else inspect.cleandoc(cls.__doc__ or "")
        cls.__loom_spec__ = NodeSpec(
            type_id=type_id,
            cls=cls,
            title=title,
            category=category,
            version=version,
            description=doc,
            inputs=inputs,
            outputs=list(outputs),
            output_node=output_node,
            deterministic=deterministic,
            migrations=dict(migrations or {}),
        )
        return cls

    return wrap


def ignored_inputs(spec: NodeSpec, values: dict[str, Any],
                   linked: set[str] | frozenset[str]) -> dict[str, str]:
    """The inputs of a node that have no effect as it is wired and set, each with the reason
    ("input 'after' is connected", "mode is 'mean'")."""
    out: dict[str, str] = {}
    for name, inp in spec.inputs.items():
        for other, cond in (inp.ignored_when or {}).items():
            if cond == LINKED:
                if other in linked:
                    out[name] = f"input '{other}' is connected"
                    break
            elif other not in linked:
                current = values.get(other, spec.inputs[other].default
                                     if other in spec.inputs else None)
                if current == cond:
                    out[name] = f"'{other}' is {cond!r}"
                    break
    return out


def spec_of(cls: type) -> NodeSpec:
    spec = getattr(cls, "__loom_spec__", None)
    if spec is None:
        raise TypeError(f"{cls!r} is not a node class (missing @node)")
    return spec


class RunContext:
    """What a running node may use: its identity, the run options, progress and cancellation."""

    def __init__(
        self,
        node_id: str,
        node_type: str,
        options: dict[str, Any],
        progress: Callable[[int, int, Any], None],
        is_cancelled: Callable[[], bool],
    ):
        self.node_id = node_id
        self.node_type = node_type
        self.options = options
        self._progress = progress
        self._is_cancelled = is_cancelled
        self.ui: dict[str, Any] = {}

    @property
    def device(self) -> str:
        return str(self.options.get("device", "auto"))

    @property
    def cancelled(self) -> bool:
        return self._is_cancelled()

    def check_cancelled(self) -> None:
        """Raise `Cancelled` if the user asked to stop; long nodes call this between steps."""
        from engine.errors import Cancelled

        if self._is_cancelled():
            raise Cancelled()

    def progress(self, step: int, total: int, preview: Any = None) -> None:
        """Report step `step` of `total`, optionally with a preview image (numpy HxWx3 uint8)."""
        self._progress(step, total, preview)

    def set_ui(self, **values: Any) -> None:
        """Results meant for the user (written files, images to show); cached with the outputs."""
        self.ui.update(values)


class PreflightContext:
    """What a node's `preflight` classmethod may use: its identity and the run options."""

    def __init__(self, node_id: str, node_type: str, options: dict[str, Any]):
        self.node_id = node_id
        self.node_type = node_type
        self.options = options

    @property
    def device(self) -> str:
        return str(self.options.get("device", "auto"))

    @property
    def output_dir(self) -> str:
        """The output folder the run writes into (as nodes read it: default "out")."""
        return str(self.options.get("output_dir", "out"))

    @property
    def base_dir(self) -> str | None:
        base = self.options.get("base_dir")
        return str(base) if base else None

    def resolve(self, value: str, library: str | None = None) -> Any:
        """A path input's value resolved as the node's run() will resolve it (a Path); pass
        the input's `library` kind to look in the model library too."""
        from engine.paths import resolve_path

        return resolve_path(value, self.options, library)
