"""The Ray backend of batch rendering: items go to Ray actors, one per GPU (or per
`worker_cpus` CPUs), each holding a warm Session (loaded models, result cache).

- Locality: the batch's items come in the order that reuses upstream work (engine.batch); each
  worker is dealt one contiguous run of that order, so items with the same checkpoint and prompt
  go to the same worker. At most WINDOW items per worker are in flight (one renders, one waits,
  so a worker never idles for the driver); a worker whose run is done takes items from the end
  of the longest run left (the items furthest from what that worker is rendering).
- Failures: a worker process that dies is restarted by Ray (`max_restarts`) and the items it
  had are retried by Ray (`max_task_retries`) on the restarted one; a worker Ray gives up on
  has its items rendered by the others. A node error is an item result ("error"), not a failure.
- Results stream back as they finish (`ray.wait`): the worker renders into a temporary folder
  and returns the files' bytes; the driver writes them into the output folder under the same
  names and appends the item's manifest line, so a finished item is never lost with a worker,
  and nothing needs a shared file system.
- Paths: the workers import Loom from the driver's project folder (PYTHONPATH), or from the
  copy Ray ships when the runtime env has a `working_dir`; a workflow folder inside the project
  is mapped to the worker's copy, other paths (models) must exist at the same place on every
  machine.

Ray is optional (`pip install 'ray>=2.9'`); it is imported only when this backend starts.
"""

from __future__ import annotations

import collections
import importlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.batch import Batch, BatchError, Item, ItemResult, render_item
from engine.files import write_atomic, write_numbered
from engine.paths import PROJECT_ROOT

WINDOW = 2
"""Items in flight per worker."""
MAX_RESTARTS = 3
"""How often Ray restarts a worker process that died."""
MAX_TASK_RETRIES = 3
"""How often Ray retries an item whose worker died while it ran (on the restarted worker)."""
MAX_ATTEMPTS = 3
"""Items of a worker Ray gave up on go to another worker, at most this often per item."""
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM")
"""Environment variables the workers get from the driver (and every LOOM_* one)."""

INSTALL_HINT = ("Ray is not installed: `pip install 'ray>=2.9'` (or `pip install -e '.[ray]'` "
                "in the Loom folder), then run again")


def import_ray():
    """The ray module, or a BatchError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise BatchError(INSTALL_HINT) from None
    return ray


class LoomWorker:
    """What runs in a Ray actor: a Session kept warm across items (and across batches)."""

    def __init__(self, modules: list[str]):
        from engine.api import Session
        from engine.plugins import load_registry

        # what the driver starts with: built-in nodes, plugins' entry points and the user's
        # nodes folder (the LOOM_* variables travel to the workers), then any other module the
        # driver's registry had
        registry = load_registry()
        known = {spec.cls.__module__ for spec in registry}
        for name in modules:
            if name.split(".")[0] != "nodes" and name not in known:
                try:
                    registry.register_module(importlib.import_module(name))
                except ImportError:
                    pass  # a user-folder module, loaded by load_registry from its file
        self.session = Session(registry)
        self._graphs: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "root": str(PROJECT_ROOT)}

    def _graph(self, plan: dict[str, Any]):
        graph = self._graphs.get(plan["key"])
        if graph is None:
            from engine.workflow import graph_from_document, parse_document

            doc = parse_document(plan["workflow"])
            graph = graph_from_document(doc, self.session.registry, check=False)
            self._graphs = {plan["key"]: graph}  # one batch at a time: keep only the last
        return graph

    def render(self, plan: dict[str, Any], index: int, values: dict[str, Any],
               name: str) -> dict[str, Any]:
        base = plan["base_dir"]
        if plan["in_project"]:
            base = str(PROJECT_ROOT / base)
        folder = tempfile.mkdtemp(prefix="loom-batch-")
        try:
            result = render_item(self.session, self._graph(plan), Item(index, values), folder,
                                 device=plan["device"], options={**plan["options"],
                                                                 "base_dir": base},
                                 width=plan["width"], worker=name)
            assert result is not None  # no stop signal here: an item always finishes
            files = []
            for f in result.files:
                p = Path(f)
                try:
                    rel = p.resolve().relative_to(Path(folder).resolve()).as_posix()
                except ValueError:  # written outside the output folder: report, not move
                    files.append((str(p), None))
                    continue
                files.append((rel, p.read_bytes()))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return {"result": result, "files": files}


_NUMBERED = re.compile(r"^(?P<prefix>.+)_\d{5,}(?P<suffix>\.[^./]+)$")


def write_back(out: Path, rel: str, data: bytes) -> Path:
    """Write a file a worker returned under its name in `out`: a numbered name
    (`prefix_NNNNN.png`) is claimed as Save Image claims it (the next free number, never
    replacing a file); any other name is replaced atomically."""
    target = out / rel
    m = _NUMBERED.match(target.name)
    if m:
        return write_numbered(target.parent, m.group("prefix"), m.group("suffix"), data)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(target, data)


def runtime_env(user: dict[str, Any] | None = None,
                ships_code: bool = False) -> dict[str, Any]:
    """The workers' Ray runtime env: `user`'s, plus the driver's LOOM_* and Hugging Face
    offline variables, plus PYTHONPATH = the project folder unless Ray ships the code
    (`working_dir` or `py_modules` there, or `ships_code`: in the job's runtime env)."""
    env = dict(user or {})
    env_vars = {str(k): str(v) for k, v in (env.get("env_vars") or {}).items()}
    for key, value in os.environ.items():
        if key.startswith("LOOM_") or key in FORWARDED_ENV:
            env_vars.setdefault(key, value)
    env_vars.setdefault("HF_HUB_OFFLINE", "1")
    if not ships_code and "working_dir" not in env and "py_modules" not in env:
        paths = [str(PROJECT_ROOT)] + ([os.environ["PYTHONPATH"]]
                                       if os.environ.get("PYTHONPATH") else [])
        env_vars.setdefault("PYTHONPATH", os.pathsep.join(paths))
    env["env_vars"] = env_vars
    return env


def chunks(items: list[Item], n: int) -> list[list[Item]]:
    """`items` cut into `n` contiguous runs whose sizes differ by at most one."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class RayBackend:
    """Render a batch's items on Ray actors. `address`: a Ray cluster (None: Ray's default,
    RAY_ADDRESS or a running local cluster, else a new local one; "local": always a new one).
    `workers`: how many actors (default: one per GPU, else one per `worker_cpus` CPUs).
    `runtime_env`: Ray's runtime env for the workers (see `runtime_env`). Reusable across
    batches (the workers stay warm) until `close()`."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None,
                 worker_cpus: float = 1, worker_gpus: float | None = None,
                 runtime_env: dict[str, Any] | None = None,
                 init_options: dict[str, Any] | None = None):
        if workers is not None and workers < 1:
            raise BatchError("--workers must be at least 1")
        self.address = address
        self.workers = workers
        self.worker_cpus = worker_cpus
        self.worker_gpus = worker_gpus
        self.user_env = runtime_env
        self.init_options = dict(init_options or {})
        self.actors: list[Any] = []
        self.names: list[str] = []
        self._started_ray = False
        self._modules: tuple[str, ...] = ()
        self._device = None

    # workers -------------------------------------------------------------------------------
    def start(self, modules: list[str], device: str = "auto") -> None:
        """Connect to Ray (or start it) and create the workers, if not done yet."""
        ray = import_ray()
        if self.actors and (tuple(modules), device) == (self._modules, self._device):
            return
        self._kill_actors()
        actor_env = None
        if not ray.is_initialized():
            # the runtime env goes to the job: Ray uploads a local working_dir only from there
            try:
                ray.init(address=self.address, include_dashboard=False,
                         runtime_env=runtime_env(self.user_env), **self.init_options)
            except (ConnectionError, ValueError, RuntimeError, TypeError) as exc:
                raise BatchError(f"cannot start Ray ({self.address or 'the default address'})"
                                 f": {exc}") from None
            self._started_ray = True
        else:
            # Ray was started by the caller, with its own job env: ours goes to the workers
            job = ray.get_runtime_context().runtime_env or {}
            actor_env = runtime_env(self.user_env, "working_dir" in job or "py_modules" in job)
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        per_gpu = self.worker_gpus
        if per_gpu is None:
            per_gpu = 1 if gpus >= 1 and device in ("auto", "cuda") else 0
        if per_gpu:
            count = self.workers or max(1, int(gpus // per_gpu))
        else:
            cpus = resources.get("CPU", 1)
            count = self.workers or (max(1, int(cpus // self.worker_cpus))
                                     if self.worker_cpus > 0 else 1)
        actor_class = ray.remote(LoomWorker)
        options: dict[str, Any] = {"num_cpus": self.worker_cpus, "num_gpus": per_gpu,
                                   "max_restarts": MAX_RESTARTS,
                                   "max_task_retries": MAX_TASK_RETRIES}
        if actor_env is not None:
            options["runtime_env"] = actor_env
        try:
            self.actors = [actor_class.options(**options).remote(list(modules))
                           for _ in range(count)]
        except (ValueError, TypeError) as exc:  # e.g. a local working_dir at the actor level
            raise BatchError(f"cannot create the Ray workers: {exc}") from None
        self.names = [f"ray-{i}" for i in range(count)]
        try:  # wait until they are up: one that cannot start fails the batch before it begins
            ray.get([a.info.remote() for a in self.actors])
        except ray.exceptions.RayActorError as exc:
            self._kill_actors()
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise BatchError(f"a Ray worker could not start: {lines[-1] if lines else exc}"
                             ) from None
        self._modules, self._device = tuple(modules), device

    def pids(self) -> list[int]:
        """The workers' process ids (tests kill one)."""
        ray = import_ray()
        return [info["pid"] for info in ray.get([a.info.remote() for a in self.actors])]

    def _kill_actors(self) -> None:
        if not self.actors:
            return
        ray = import_ray()
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors, self.names = [], []

    def close(self) -> None:
        """Stop the workers (and Ray, if this backend started it)."""
        self._kill_actors()
        if self._started_ray:
            ray = import_ray()
            ray.shutdown()
            self._started_ray = False

    # a batch -------------------------------------------------------------------------------
    def _plan(self, batch: Batch) -> dict[str, Any]:
        from engine.workflow import dumps

        graph = batch.plan.graph
        source = graph.ui.get("_source")
        base = Path(source).parent if source else Path.cwd()
        try:
            rel, in_project = base.resolve().relative_to(PROJECT_ROOT).as_posix(), True
        except ValueError:
            rel, in_project = str(base.resolve()), False
        return {"key": batch.plan.fingerprint(), "workflow": dumps(graph), "base_dir": rel,
                "in_project": in_project, "device": batch.device, "options": batch.options,
                "width": batch.plan.index_width}

    def prepare(self, batch: Batch) -> None:
        self.start(sorted({spec.cls.__module__ for spec in batch.plan.registry}), batch.device)

    def run(self, batch: Batch) -> Iterator[ItemResult]:
        ray = import_ray()
        from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

        self.prepare(batch)
        if not batch.todo:
            return
        plan_ref = ray.put(self._plan(batch))
        queues = [collections.deque(c) for c in chunks(batch.todo, len(self.actors))]
        alive = [True] * len(self.actors)
        busy: list[int] = [0] * len(self.actors)
        inflight: dict[Any, tuple[int, Item]] = {}
        attempts: dict[int, int] = {}
        lost: Exception | None = None

        def next_item(i: int) -> Item | None:
            if queues[i]:
                return queues[i].popleft()
            longest = max(queues, key=len)
            return longest.pop() if longest else None

        def feed() -> None:
            if batch.stop.soft.is_set():
                return
            for i, actor in enumerate(self.actors):
                while alive[i] and busy[i] < WINDOW:
                    item = next_item(i)
                    if item is None:
                        return
                    ref = actor.render.remote(plan_ref, item.index, item.values, self.names[i])
                    inflight[ref] = (i, item)
                    busy[i] += 1

        feed()
        while inflight:
            if batch.stop.hard.is_set():
                return  # what is in flight is dropped: it runs again on resume
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.2)
            for ref in ready:
                i, item = inflight.pop(ref)
                busy[i] -= 1
                try:
                    reply = ray.get(ref)
                except RayActorError as exc:
                    lost = exc
                    if isinstance(exc, ActorDiedError):
                        alive[i] = False
                    attempts[item.index] = attempts.get(item.index, 0) + 1
                    if attempts[item.index] < MAX_ATTEMPTS and any(alive):
                        j = min((k for k in range(len(alive)) if alive[k]),
                                key=lambda k: len(queues[k]))
                        queues[j].appendleft(item)
                        continue
                    yield ItemResult(item.index, dict(item.values), "error",
                                     error=f"the Ray worker died running it: {exc}",
                                     worker=self.names[i])
                    continue
                except RayTaskError as exc:
                    yield ItemResult(item.index, dict(item.values), "error",
                                     error=f"the Ray worker failed: {exc}",
                                     worker=self.names[i])
                    continue
                result: ItemResult = reply["result"]
                result.files = [batch.relative(str(write_back(batch.out, rel, data)))
                                if data is not None else rel for rel, data in reply["files"]]
                yield result
            if not any(alive) and any(queues):
                raise BatchError(f"every Ray worker died (the last: {lost}); run again with "
                                 "--resume to finish the batch")
            feed()
