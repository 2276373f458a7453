"""Loom: a node-graph editor for diffusion image generation.

    python main.py                      open the editor with the default workflow
    python main.py FILE                 open a workflow (.json, or a .png that carries one)
    python main.py run [WORKFLOW] [--set ID.INPUT=VALUE ...] [--out DIR]
                       [--device auto|cpu|cuda|mps]
    python main.py nodes [--json]       list the node catalogue
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _registry():
    import importlib

    from engine.errors import LoomError
    from engine.registry import default_registry

    registry = default_registry()
    # Extra node modules named by the user (e.g. their own or test nodes): imported, never exec'd.
    extra = os.environ.get("LOOM_EXTRA_NODES", "")
    for name in filter(None, (n.strip() for n in extra.split(","))):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise LoomError(f"LOOM_EXTRA_NODES: cannot import node module '{name}': "
                            f"{exc}") from None
        registry.register_module(module)
    return registry


class _ProgressPrinter:
    """A one-line progress bar on stderr: which node runs, and its step progress."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0

    def __call__(self, event) -> None:
        from engine.executor import NodeStatus, Progress

        if isinstance(event, Progress):
            now = time.monotonic()
            if not self.tty and event.step not in (1, event.total) and now - self.last < 1.0:
                return
            self.last = now
            width = 24
            filled = int(width * event.step / max(event.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            end = "" if self.tty else "\n"
            self.stream.write(f"\r{event.node_id}: [{bar}] {event.step}/{event.total}{end}")
            self.stream.flush()
        elif isinstance(event, NodeStatus) and event.status in ("done", "error", "cancelled"):
            if self.tty:
                self.stream.write("\r\033[K")
            msg = f"{event.node_id}: {event.status} in {event.elapsed:.2f}s"
            if event.error is not None:
                msg += f" -- {event.error.message}"
            self.stream.write(msg + "\n")
            self.stream.flush()


def _clean_stale_temp_files(*folders) -> None:
    """Remove temp files that killed Loom processes left in these folders (engine/files.py)."""
    from engine.files import clean_stale_temp_files

    for folder in folders:
        clean_stale_temp_files(folder)


def _refused_by_system(exc: BaseException) -> int:
    """The last resort before a run: a path the system refuses (a symlink loop, a name too
    long, an unreadable folder) that no check named first is an input error, said plainly on
    one line, never a traceback."""
    what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    where = getattr(exc, "filename", None)
    print(f"error: {f'{where}: ' if where else ''}{what}", file=sys.stderr)
    return EXIT_INVALID


def cmd_run(args: argparse.Namespace) -> int:
    from engine.api import DEFAULT_WORKFLOW, Session, apply_overrides, ignored_values
    from engine.errors import LoomError, ValidationError, WorkflowError
    from engine.validate import check_known_types

    path = Path(args.workflow) if args.workflow else DEFAULT_WORKFLOW
    _clean_stale_temp_files(args.out, path.parent)
    try:
        session = Session(_registry())
        graph = session.load(path, check=False)
        check_known_types(graph, session.registry)  # before overrides, outputs or values
        apply_overrides(graph, session.registry, args.set or [])
        for warning in ignored_values(graph, session.registry, args.set or []):
            print(f"warning: {warning}", file=sys.stderr)
        printer = _ProgressPrinter()
        handle = session.executor.submit(
            graph, None, session.options(graph, args.out, args.device,
                                         {"check_mutations": True} if args.check_inputs
                                         else None), printer)
    except (ValidationError, WorkflowError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except LoomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (OSError, ValueError, RuntimeError) as exc:
        return _refused_by_system(exc)
    try:
        result = handle.result()
    except KeyboardInterrupt:
        handle.cancel()
        result = handle.result()
    for f in result.files:
        print(f)
    for nid, ui in result.ui.items():
        for warning in ui.get("warnings") or ():
            print(f"warning: node '{nid}': {warning}", file=sys.stderr)
    for err in result.errors.values():
        print(f"error: {err}", file=sys.stderr)
        if args.verbose:
            print(err.traceback, file=sys.stderr)
    if result.cancelled:
        print("cancelled", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_nodes(args: argparse.Namespace) -> int:
    from engine.errors import LoomError
    from engine.node import LINKED

    try:
        registry = _registry()
    except LoomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        json.dump(registry.catalogue(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return EXIT_OK
    for spec in registry:
        summary = spec.description.splitlines()[0] if spec.description else ""
        print(f"{spec.type_id}  ({spec.title}, v{spec.version}) -- {summary}")
        for inp in spec.inputs.values():
            extra = []
            if inp.has_default:
                extra.append(f"default {inp.default!r}")
            if inp.min is not None or inp.max is not None:
                extra.append(f"range {inp.min}..{inp.max}")
            if inp.choices:
                extra.append("choices " + "|".join(map(str, inp.choices)))
            if inp.optional:
                extra.append("optional")
            for other, cond in (inp.ignored_when or {}).items():
                extra.append(f"ignored when {other} " + ("is connected" if cond == LINKED
                                                          else f"is {cond!r}"))
            print(f"    in  {inp.name}: {inp.type}" + (f"  [{', '.join(extra)}]" if extra else ""))
        for out in spec.outputs:
            print(f"    out {out.name}: {out.type}")
    return EXIT_OK


def cmd_editor(args: argparse.Namespace) -> int:
    try:
        from editor.app import main as editor_main
    except ImportError as exc:
        print(f"the editor is not available: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return editor_main(file=args.file, screenshot=args.screenshot, render=args.render)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py",
                                     description="Loom: node-graph diffusion editor")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="render a workflow headless")
    run.add_argument("workflow", nargs="?",
                     help="workflow .json or .png (default: the bundled one)")
    run.add_argument("--set", action="append", metavar="ID.INPUT=VALUE",
                     help="override a node's input value (repeatable)")
    run.add_argument("--out", default="out", help="output folder (default: out)")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    run.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    run.add_argument("--check-inputs", action="store_true",
                     help="fail a node that changes a value it was given in place (hashes every "
                          "input before and after each node; slower; for node authors)")
    nodes = sub.add_parser("nodes", help="list the node catalogue")
    nodes.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("run", "nodes", "-h", "--help"):
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return EXIT_INVALID if exc.code else EXIT_OK
        return cmd_run(args) if args.command == "run" else cmd_nodes(args)
    ep = argparse.ArgumentParser(prog="main.py", description="open the Loom editor",
                                 epilog="Subcommands: run (headless render), nodes (catalogue)")
    ep.add_argument("file", nargs="?", help="workflow .json or .png to open")
    ep.add_argument("--screenshot", metavar="PATH", help="save a PNG of the window and exit")
    ep.add_argument("--render", action="store_true",
                    help="with --screenshot: run the graph first, then take the picture")
    try:
        args = ep.parse_args(argv)
    except SystemExit as exc:
        return EXIT_INVALID if exc.code else EXIT_OK
    return cmd_editor(args)


if __name__ == "__main__":
    sys.exit(main())
