"""Loom: a node-graph editor for diffusion image generation.

    python main.py                      open the editor with the default workflow
    python main.py FILE                 open a workflow (.json, or a .png that carries one)
    python main.py run [WORKFLOW] [--set ID.INPUT=VALUE ...] [--out DIR]
                       [--device auto|cpu|cuda|mps]
    python main.py batch [WORKFLOW] --sweep ID.INPUT=VALUES ... --out DIR [--zip A,B]
                         [--set ID.INPUT=VALUE ...] [--ray [ADDRESS]] [--workers N] [--resume]
    python main.py nodes [--json]       list the node catalogue (by package) and plugin errors
    python main.py models [--kind K] [--json]
                                        list the model library's files with their families
    python main.py import-comfy FILE -o WORKFLOW.json [--comfy-root DIR]
                                        convert a ComfyUI workflow (.json or .png)
    python main.py --safe ...           built-in nodes only (no plugins, no user nodes folder)
    python main.py --vram MODE ...      GPU memory: auto (default: models stay on the GPU while
                                        they fit, else move to RAM between nodes), high (all
                                        stay), low (only the one in use), none (block by block)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
VRAM_MODES = ("auto", "high", "low", "none")  # nodes.lib.vram.MODES (torch-free copy)


def _take_vram(argv: list[str]) -> str | None:
    """Remove `--vram MODE` / `--vram=MODE` from argv (it applies to every command) and put it
    in LOOM_VRAM, which nodes.lib.vram reads (batch workers inherit it); an error message for
    a missing or unknown mode, else None."""
    for i, item in enumerate(argv):
        if item == "--vram" or item.startswith("--vram="):
            value = item.partition("=")[2] if "=" in item else \
                (argv[i + 1] if i + 1 < len(argv) else "")
            del argv[i:i + (1 if "=" in item else 2)]
            if value not in VRAM_MODES:
                return f"--vram: choose one of {', '.join(VRAM_MODES)} (got {value!r})"
            os.environ["LOOM_VRAM"] = value
            return None
    return None


def _registry(warn: bool = True):
    """Loom's node types with the plugins' (engine.plugins; none with --safe). A plugin that
    fails to load is a warning on stderr and Loom goes on without it; a LOOM_EXTRA_NODES module
    that cannot be imported is an error (LoomError)."""
    from engine.plugins import load_registry

    registry = load_registry()
    if warn:
        for error in registry.report.errors:
            print(f"warning: plugin {error} (not loaded; `main.py nodes` lists the plugins)",
                  file=sys.stderr)
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
    from engine.modes import run_plan
    from engine.validate import check_known_types

    path = Path(args.workflow) if args.workflow else DEFAULT_WORKFLOW
    _clean_stale_temp_files(args.out, path.parent)
    try:
        session = Session(_registry())
        graph = session.load(path, check=False)
        check_known_types(graph, session.registry)  # before overrides, outputs or values
        for note in graph.ui.get("_relinked") or ():  # model files found elsewhere (library)
            print(f"warning: {note}", file=sys.stderr)
        apply_overrides(graph, session.registry, args.set or [])
        for warning in ignored_values(graph, session.registry, args.set or []):
            print(f"warning: {warning}", file=sys.stderr)
        # bypassed and muted nodes (saved by the editor) are honoured here too
        to_run, outputs, notes = run_plan(graph, session.registry)
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        printer = _ProgressPrinter()
        handle = session.executor.submit(
            to_run, outputs, session.options(graph, args.out, args.device,
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


def cmd_batch(args: argparse.Namespace) -> int:
    """Render a workflow once per combination of swept values (engine/batch.py)."""
    import signal

    from engine.api import DEFAULT_WORKFLOW, Session, apply_overrides, ignored_values
    from engine.batch import (
        Batch,
        BatchError,
        BatchProgress,
        InProcessBackend,
        check_plan,
        make_backend,
        plan_batch,
    )
    from engine.errors import LoomError
    from engine.validate import check_known_types

    path = Path(args.workflow) if args.workflow else DEFAULT_WORKFLOW
    _clean_stale_temp_files(args.out, path.parent)
    try:
        session = Session(_registry())
        graph = session.load(path, check=False)
        check_known_types(graph, session.registry)
        apply_overrides(graph, session.registry, args.set or [])
        plan = plan_batch(graph, args.sweep or [], args.zip or [])
        both = {s.partition("=")[0].strip() for s in args.set or []} & \
            {s.target for s in plan.sweeps}
        if both:
            raise BatchError(f"{', '.join(sorted(both))}: both --set and --sweep")
        check_plan(plan)
        targets = [*(args.set or []), *(s.target for s in plan.sweeps)]
        for warning in ignored_values(graph, session.registry, targets):
            print(f"warning: {warning}", file=sys.stderr)
        if args.ray is None:
            make_backend(None, args.workers)  # refuses --workers N > 1 without --ray
            backend = InProcessBackend(session)
        else:
            env = _json_option(args.ray_env, "--ray-env") if args.ray_env else None
            backend = make_backend(args.ray, args.workers, worker_cpus=args.worker_cpus,
                                   runtime_env=env)
        batch = Batch(plan, args.out, resume=args.resume, backend=backend, device=args.device,
                      options={"check_mutations": True} if args.check_inputs else None,
                      own_backend=True)
        if batch.done_before:
            print(f"resuming: {batch.done_before} of {batch.total} items already done",
                  file=sys.stderr)
        batch.prepare()
    except LoomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (OSError, ValueError, RuntimeError) as exc:
        return _refused_by_system(exc)

    def on_interrupt(signum, frame) -> None:
        when = batch.stop.request()
        print("\nstopping " + ("after the items being rendered (Ctrl-C again to stop now); "
                               "--resume finishes the batch" if when == "after" else "now"),
              file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread
        previous = None
    progress = BatchProgress(batch.total, batch.done_before)
    tty = sys.stderr.isatty()
    clear = "\r\033[K" if tty else ""  # the progress line, on a terminal
    shown = 0.0
    error = None
    try:
        for r in batch:
            progress.add(r)
            if tty and r.files:
                sys.stderr.write(clear)
                sys.stderr.flush()
            for f in r.files:
                print(Path(args.out) / f, flush=tty)
            if not r.ok:
                values = ", ".join(f"{k}={v!r}" for k, v in r.values.items())
                print(f"{clear}error: item {r.index} ({values}): {r.error}",
                      file=sys.stderr)
            now = time.monotonic()
            if tty:
                sys.stderr.write(clear + progress.line())
                sys.stderr.flush()
            elif now - shown >= 1.0 or progress.remaining == 0:
                shown = now
                print(progress.line(), file=sys.stderr)
    except LoomError as exc:
        error = exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if tty:
        sys.stderr.write("\n")
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
    ok = progress.finished - progress.failed
    print(f"batch: {ok} ok, {progress.failed} failed, {progress.remaining} not run "
          f"(of {batch.total}; {batch.done_before} done before); manifest "
          f"{Path(args.out) / 'manifest.jsonl'}", file=sys.stderr)
    return EXIT_OK if progress.failed == 0 and progress.remaining == 0 else EXIT_FAILED


def _json_option(value: str, name: str):
    """A JSON object given inline (`{...}`) or as a file path."""
    from engine.errors import LoomError

    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text("utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise LoomError(f"{name}: cannot read {value!r} as a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise LoomError(f"{name}: {value!r} is not a JSON object")
    return data


def cmd_nodes(args: argparse.Namespace) -> int:
    from engine.errors import LoomError
    from engine.node import LINKED

    try:
        registry = _registry(warn=args.json)
    except LoomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        json.dump(registry.catalogue(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return EXIT_OK
    # grouped by package, each under a "# name version (kind)" line; failures at the end
    report = registry.report
    order = {info: i for i, (info, _types) in enumerate(report.packages)}
    specs = sorted(registry, key=lambda s: order.get(registry.package_of(s.type_id), len(order)))
    shown = object()
    for spec in specs:
        info = registry.package_of(spec.type_id)
        if info != shown:
            shown = info
            if info is not None:
                kind = {"builtin": "built in", "plugin": f"plugin, {info.source}",
                        "user": f"user nodes folder, {info.source}",
                        "module": "LOOM_EXTRA_NODES"}.get(info.kind, info.kind)
                print(f"# {info.label()} ({kind})")
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
    if report.safe:
        print("# safe mode (--safe): plugins, the user's nodes folder and LOOM_EXTRA_NODES were "
              "not loaded")
    for error in report.errors:
        print(f"# failed: {error}")
    return EXIT_OK


def cmd_import_comfy(args: argparse.Namespace) -> int:
    """Convert a ComfyUI workflow (UI or API format, .json or a ComfyUI PNG) to a Loom one;
    what does not map is listed and kept as placeholder nodes (engine.comfy)."""
    from engine.comfy import ImportOptions, import_file
    from engine.errors import LoomError
    from engine.validate import problems
    from engine.workflow import graph_from_document, save_workflow

    try:
        registry = _registry()
        options = ImportOptions(args.comfy_root, base_dir=str(Path(args.output).parent),
                                inpaint_model=args.inpaint_model)
        doc, report = import_file(args.file, registry, options)
        graph = graph_from_document(doc, registry, str(args.file), check=False)
        save_workflow(graph, args.output)
    except LoomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (OSError, ValueError) as exc:
        return _refused_by_system(exc)
    for line in report.lines():
        print(line, file=sys.stderr)
    placeholders = {f"comfy_{cid}" for cid, _t, _w in report.not_mapped}
    for problem in problems(graph, registry):
        if problem.node_id not in placeholders:
            print(f"warning: {problem}", file=sys.stderr)
    print(args.output)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """The model library's files by kind, with the family read from each file's header."""
    import nodes  # noqa: F401  (registers how to read a model file's family)
    from engine.library import models_command

    return models_command(args.kind, args.json)


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
    batch = sub.add_parser(
        "batch", help="render a workflow once per combination of swept values",
        description="Render a workflow for every combination of the swept values (the cross "
                    "product; --zip makes sweeps vary together), sharing models and prompt "
                    "encodings across items. Writes DIR/<prefix>_item<index>_NNNNN.png (the "
                    "workflow and the item's values embedded) and DIR/manifest.jsonl (a line "
                    "per finished item). Ctrl-C stops after the items being rendered; --resume "
                    "finishes the rest. Exit status 1 if any item failed or was not run.")
    batch.add_argument("workflow", nargs="?",
                       help="workflow .json or .png (default: the bundled one)")
    batch.add_argument("--sweep", action="append", metavar="ID.INPUT=VALUES",
                       help="values one input takes: a,b,c | A..B[:STEP] (numbers) | @FILE "
                            "(one per line) | a JSON list (repeatable)")
    batch.add_argument("--zip", action="append", metavar="A,B",
                       help="swept inputs that vary together instead of crosswise "
                            "(as many values each; repeatable)")
    batch.add_argument("--set", action="append", metavar="ID.INPUT=VALUE",
                       help="a fixed value for every item (repeatable)")
    batch.add_argument("--out", required=True, metavar="DIR",
                       help="output folder (its manifest.jsonl records the items)")
    batch.add_argument("--resume", action="store_true",
                       help="finish the batch in DIR: skip the items it finished")
    batch.add_argument("--ray", nargs="?", const=True, metavar="ADDRESS",
                       help="render on Ray workers (one per GPU, else per CPU): a cluster "
                            "address, or none for Ray's default (RAY_ADDRESS, a running "
                            "local cluster, else a new local one)")
    batch.add_argument("--workers", type=int, metavar="N", help="how many Ray workers")
    batch.add_argument("--worker-cpus", type=float, default=1, metavar="C",
                       help="CPUs per Ray worker (default 1)")
    batch.add_argument("--ray-env", metavar="JSON|FILE",
                       help="the Ray runtime env for the workers (e.g. '{\"working_dir\": "
                            "\".\"}' to ship the project to a cluster)")
    batch.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    batch.add_argument("--check-inputs", action="store_true",
                       help="fail a node that changes a value it was given in place")
    nodes = sub.add_parser("nodes", help="list the node catalogue")
    nodes.add_argument("--json", action="store_true")
    models = sub.add_parser("models", help="list the model library's files and folders")
    models.add_argument("--kind", choices=("checkpoints", "loras", "embeddings", "controlnet",
                                           "vae", "upscale_models"))
    models.add_argument("--json", action="store_true")
    comfy = sub.add_parser("import-comfy", help="convert a ComfyUI workflow to a Loom one")
    comfy.add_argument("file", help="ComfyUI workflow: .json (UI or API format) or a ComfyUI PNG")
    comfy.add_argument("-o", "--output", required=True, metavar="WORKFLOW.json",
                       help="the Loom workflow to write")
    comfy.add_argument("--comfy-root", metavar="DIR",
                       help="ComfyUI's folder: model and image names resolve to its "
                            "models/checkpoints, models/loras, models/controlnet and input "
                            "(default: kept as written, relative to the new workflow)")
    comfy.add_argument("--inpaint-model", choices=("auto", "yes", "no"), default="auto",
                       help="VAEEncodeForInpaint: is the checkpoint an inpainting model? "
                            "(auto: by its name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--safe" in argv:
        argv.remove("--safe")  # built-in nodes only, for every command (engine.plugins)
        os.environ["LOOM_SAFE"] = "1"
    problem = _take_vram(argv)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID
    if argv and argv[0] in ("run", "batch", "nodes", "models", "import-comfy", "-h", "--help"):
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return EXIT_INVALID if exc.code else EXIT_OK
        commands = {"run": cmd_run, "batch": cmd_batch, "import-comfy": cmd_import_comfy,
                    "models": cmd_models}
        return commands.get(args.command, cmd_nodes)(args)
    ep = argparse.ArgumentParser(prog="main.py", description="open the Loom editor",
                                 epilog="Subcommands: run (headless render), batch (sweeps), "
                                        "nodes (catalogue), models (model library), import-comfy "
                                        "(ComfyUI workflows); "
                                        "--safe: built-in nodes only; --vram "
                                        "auto|high|low|none: GPU memory mode")
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
