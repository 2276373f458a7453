"""Hostile input never reaches a traceback, and every input error is found before the first node
runs: the `preflight` hook of the node API, path inputs (NUL, lone surrogates, over-long names,
symlink loops, huge folders), output folders and prefixes, memory and prompt limits, malformed
model configs -- through the engine, the Python API and `main.py run`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import paths as paths_mod
from engine.api import Session
from engine.errors import NodeInputError, ValidationError, WorkflowError
from engine.executor import Executor
from engine.graph import Graph
from engine.node import Input, Output, PreflightContext, RunContext, node
from engine.paths import file_identity, path_access_problem, path_problem, resolve_path
from engine.preflight import (
    available_memory,
    output_dir_problem,
    prefix_problem,
)
from engine.types import INT, STRING
from engine.validate import problems
from engine.workflow import MAX_FILE_BYTES, parse_document
from tests.support import pynodes

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "resources" / "models" / "loom-shapes"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

CALLS: list[tuple[str, dict]] = []


@node("test.checked", title="Test Checked", category="test", version="1.0.0",
      outputs=[Output("value", INT)])
class Checked:
    """Refuses `n` over 10 before the run; `text` may come from a link."""

    n = Input(INT, default=1, min=0, max=100)
    text = Input(STRING, default="hello")
    file = Input(STRING, default="", path=True)

    @classmethod
    def preflight(cls, values, ctx: PreflightContext):
        CALLS.append((ctx.node_id, dict(values)))
        if values["n"] > 10:
            yield "n", f"{values['n']} is over 10"
        if values.get("file"):
            resolved = ctx.resolve(values["file"])
            if not resolved.exists():
                yield "file", f"no file at {resolved}", "missing_file"

    def run(self, ctx: RunContext) -> int:
        pynodes._ran(ctx)
        return self.n


@node("test.broken_check", title="Test Broken Check", category="test", version="1.0.0",
      outputs=[Output("value", INT)])
class BrokenCheck:
    mode = Input(STRING, default="raise")

    @classmethod
    def preflight(cls, values, ctx):
        if values["mode"] == "raise":
            raise KeyError("oops")
        if values["mode"] == "input":
            raise NodeInputError("mode", "not this mode")
        if values["mode"] == "junk":
            return [42]
        return None

    def run(self, ctx: RunContext) -> int:
        pynodes._ran(ctx)
        return 1


@pytest.fixture()
def registry():
    reg = pynodes.make_registry()
    reg.register(Checked)
    reg.register(BrokenCheck)
    pynodes.reset()
    CALLS.clear()
    return reg


def _graph(registry, nodes: dict) -> Graph:
    g = Graph(registry)
    for nid, (type_id, values) in nodes.items():
        g.add_node(type_id, nid, values={k: v for k, v in values.items()
                                         if not isinstance(v, tuple)})
    for nid, (_t, values) in nodes.items():
        for k, v in values.items():
            if isinstance(v, tuple):
                g.connect(v[0], v[1], nid, k)
    return g


# the hook -----------------------------------------------------------------------------------------


def test_preflight_problems_name_node_type_and_input_and_nothing_runs(registry, tmp_path):
    g = _graph(registry, {
        "a": ("test.checked", {"n": 50, "file": "missing.txt"}),
        "show": ("test.show", {"value": ("a", "value")}),
    })
    with pytest.raises(ValidationError) as info:
        Executor(registry).run(g, options={"base_dir": str(tmp_path)})
    got = [(p.code, p.node_id, p.node_type, p.input) for p in info.value.problems]
    assert got == [("preflight", "a", "test.checked", "n"),
                   ("missing_file", "a", "test.checked", "file")]
    assert "node 'a' (test.checked) input 'n': 50 is over 10" in str(info.value)
    assert str(tmp_path / "missing.txt") in str(info.value)  # resolved against base_dir
    assert pynodes.RUNS == []


def test_preflight_sees_constants_with_defaults_not_links_and_only_needed_nodes(registry):
    g = _graph(registry, {
        "s": ("primitive.string", {"value": "linked"}),
        "a": ("test.checked", {"n": 3, "text": ("s", "value")}),
        "show": ("test.show", {"value": ("a", "value")}),
        "unused": ("test.checked", {"n": 99}),
        "show2": ("test.show", {"value": ("unused", "value")}),
    })
    result = Executor(registry).run(g, outputs=["show"])
    assert result.ok
    assert CALLS == [("a", {"n": 3, "file": ""})]  # no `text` (linked), no `unused` node


def test_validation_and_preflight_problems_are_reported_together(registry):
    g = _graph(registry, {
        "bad": ("test.const", {"value": "three"}),
        "a": ("test.checked", {"n": 20}),
        "w1": ("test.show", {"value": ("bad", "value")}),
        "w2": ("test.show", {"value": ("a", "value")}),
    })
    with pytest.raises(ValidationError) as info:
        Executor(registry).run(g)
    assert {(p.node_id, p.input) for p in info.value.problems} == {("bad", "value"), ("a", "n")}


def test_a_node_with_validation_problems_is_not_preflighted(registry):
    g = _graph(registry, {"a": ("test.checked", {"n": 500}),
                          "show": ("test.show", {"value": ("a", "value")})})
    with pytest.raises(ValidationError) as info:
        Executor(registry).run(g)
    assert [p.code for p in info.value.problems] == ["out_of_range"]
    assert CALLS == []


@pytest.mark.parametrize(("mode", "code", "input", "text"), [
    ("raise", "preflight_error", None, "the pre-run check of this node failed: KeyError"),
    ("input", "preflight", "mode", "input 'mode': not this mode"),
    ("junk", "preflight_error", None, "returned 42, not an (input, message) pair"),
])
def test_a_faulty_preflight_is_a_problem_not_a_traceback(registry, mode, code, input, text):
    g = _graph(registry, {"b": ("test.broken_check", {"mode": mode}),
                          "show": ("test.show", {"value": ("b", "value")})})
    with pytest.raises(ValidationError) as info:
        Executor(registry).run(g)
    (p,) = info.value.problems
    assert (p.code, p.node_id, p.node_type, p.input) == (code, "b", "test.broken_check", input)
    assert text in str(info.value)
    assert pynodes.RUNS == []


# path inputs --------------------------------------------------------------------------------------

BAD_PATHS = {
    "nul": ("a\0b.png", "NUL character"),
    "surrogate": ("x\ud800.png", "lone surrogate (U+D800)"),
    "escaped_surrogate": ("x\udcff.png", "lone surrogate (U+DCFF)"),
    "long_name": ("x" * 300 + ".png", "is 304 bytes long; file and folder names can be at most"),
    "long_utf8_name": ("é" * 128, "is 256 bytes long"),
    "long_path": ("/" + "d/" * 2100, "paths can be at most 4096"),
}


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_bad_path_text_is_found_by_validation_and_never_crashes_a_key(registry, case):
    value, message = BAD_PATHS[case]
    assert message in path_problem(value)
    resolved = resolve_path(value, {"base_dir": "/tmp"})  # never raises
    a, b = file_identity(resolved), file_identity(Path(value))
    assert a == b and len(a) == 64
    g = _graph(registry, {"r": ("test.read_file", {"path": value}),
                          "show": ("test.show", {"value": ("r", "text")})})
    found = problems(g, registry)
    assert [(p.code, p.node_id, p.input) for p in found] == [("bad_path", "r", "path")]
    with pytest.raises(ValidationError):
        Executor(registry).run(g)
    # the cache key of a node fed such a path through a link is computed without a crash
    ex = Executor(registry)
    assert len(ex._key(g, "r", registry.get("test.read_file"), {}, {})) == 64


def test_symlink_loop_is_a_bad_path(registry, tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert "symlink loop" in path_access_problem(tmp_path / "a")
    assert len(file_identity(tmp_path / "a")) == 64
    # relative to the workflow's folder: found by the pre-run check with the run's options
    g = _graph(registry, {"r": ("test.read_file", {"path": "a"}),
                          "show": ("test.show", {"value": ("r", "text")})})
    with pytest.raises(ValidationError) as info:
        Executor(registry).run(g, options={"base_dir": str(tmp_path)})
    (p,) = info.value.problems
    assert (p.code, p.node_id, p.input) == ("bad_path", "r", "path")
    assert "symlink loop" in p.message


def test_a_huge_folder_is_identified_from_a_bounded_number_of_entries(tmp_path, monkeypatch):
    big = tmp_path / "big"
    (big / "sub").mkdir(parents=True)
    for i in range(20_000):
        (big / f"f{i:05d}").touch()
    for i in range(50):
        (big / "sub" / f"g{i}").touch()
    visited = [0]
    real_scandir = os.scandir

    class Counting:
        def __init__(self, path):
            self.it = real_scandir(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.it.close()

        def __iter__(self):
            for entry in self.it:
                visited[0] += 1
                yield entry

    monkeypatch.setattr(paths_mod.os, "scandir", Counting)
    ident = file_identity(big)
    assert visited[0] <= paths_mod.MAX_DIR_ENTRIES + 2
    # ...and still changes when the folder does (its mtime: an entry added or removed)
    (big / "new").touch()
    os.utime(big, ns=(1, 1))
    assert file_identity(big) != ident


def test_folder_identity_sees_subfolder_files_and_tells_copies_apart(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(BUILTIN, model, ignore=shutil.ignore_patterns("*.safetensors", "*.txt",
                                                                  "vocab.json"))
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    first = file_identity(model)
    assert file_identity(copy) != first  # the real path is part of it
    assert file_identity(model) == first  # stable
    cfg = model / "unet" / "config.json"
    cfg.write_text(cfg.read_text() + " ", encoding="utf-8")
    assert file_identity(model) != first


# output folders and prefixes ----------------------------------------------------------------------


def test_output_folder_checks(tmp_path):
    assert output_dir_problem(tmp_path) is None
    assert output_dir_problem(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert os.listdir(tmp_path) == []  # and leaves no probe file
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert "is a symlink loop" in output_dir_problem(tmp_path / "a")
    f = tmp_path / "file"
    f.write_text("x")
    assert "is a file, not a folder" in output_dir_problem(f)
    assert "cannot be created: a part of it is a file" in output_dir_problem(f / "sub")
    assert "NUL" in output_dir_problem("a\0b")
    assert "255 bytes" in output_dir_problem(tmp_path / ("x" * 300))


def test_an_unwritable_output_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        why = output_dir_problem(ro)
        if IS_ROOT:
            # root writes through permissions: nothing to refuse (the regular-file case above
            # is the check that holds for root too)
            assert why is None
        else:
            assert "not writable" in why
            assert "not writable" in output_dir_problem(ro / "sub")
    finally:
        os.chmod(ro, 0o700)


@pytest.mark.parametrize(("prefix", "message"), [
    ("", "must not be empty"), (".", "'..'"), ("..", "'..'"), ("a/b", "without folders"),
    ("../x", "'..'"), ("a\0b", "not allowed"), ("a\ud800", "lone surrogate"),
    ("x" * 201, "at most 200 bytes"), ("ok", None), ("日本語 prefix", None),
])
def test_prefixes(prefix, message):
    why = prefix_problem(prefix)
    assert (why is None) if message is None else (message in why)


# memory and prompt limits -------------------------------------------------------------------------


def test_available_memory_reads_the_system():
    free = available_memory()
    assert free is None or free > 0


def test_latent_noise_refuses_sizes_that_cannot_fit(monkeypatch):
    from nodes._limits import image_memory, image_size_problems
    from nodes.latents import LatentNoiseNode

    cpu, dev = image_memory(512, 512, 1)
    # 1 image of 512x512: the float image (twice) + 8-bit copy + latents; VAE at 128 channels
    assert cpu == 512 * 512 * (3 * 4 * 2 + 3) + 64 * 64 * 4 * 4
    assert dev == 2 * 64 * 64 * 320 * 4 + 512 * 512 * 128 * 4
    monkeypatch.setattr("engine.preflight.available_memory", lambda: 8 * 2**30)
    ctx = PreflightContext("noise", "latents.noise", {"device": "cpu"})
    ok = list(LatentNoiseNode.preflight({"width": 512, "height": 512, "batch": 4}, ctx))
    assert ok == []
    (problem,) = LatentNoiseNode.preflight({"width": 16384, "height": 16384, "batch": 64}, ctx)
    assert problem[0] == "width"
    assert "needs at least" in problem[1] and "8.0 GB is available" in problem[1]
    (problem,) = LatentNoiseNode.preflight({"width": 2048, "height": 2048, "batch": 64}, ctx)
    assert problem[0] == "batch" and "make the batch smaller" in problem[1]
    (problem,) = LatentNoiseNode.preflight({"width": 100, "height": 64, "batch": 1}, ctx)
    assert problem == ("width", "100 is not a multiple of 8 (latents are 1/8 of the image "
                                "size); try 96")
    assert list(image_size_problems({"height": 64}, "cpu")) == []  # width linked: unknown


def test_prompt_limit():
    from nodes._limits import MAX_PROMPT_CHARS, prompt_problem
    from nodes.conditioning import NegativePrompt, TextEncode

    ctx = PreflightContext("p", "conditioning.text_encode", {})
    assert list(TextEncode.preflight({"text": "x" * MAX_PROMPT_CHARS}, ctx)) == []
    (problem,) = TextEncode.preflight({"text": "a " * 500_000}, ctx)
    assert problem[0] == "text" and "the limit is 20,000 characters" in problem[1]
    assert list(NegativePrompt.preflight({"text": "a " * 500_000}, ctx))
    assert prompt_problem(None) is None


def test_prompts_over_the_chunk_limit_are_refused_when_tokenized():
    pytest.importorskip("transformers")
    from nodes._limits import MAX_PROMPT_CHUNKS, PromptTooLongError
    from nodes.lib.checkpoints import load_tokenizer
    from nodes.lib.prompts import tokenize

    tok = load_tokenizer(BUILTIN / "tokenizer")
    assert len(tokenize(tok, "cat " * (75 * MAX_PROMPT_CHUNKS)).ids) == MAX_PROMPT_CHUNKS
    with pytest.raises(PromptTooLongError, match="over 16 chunks of 75 tokens"):
        tokenize(tok, "cat " * (75 * MAX_PROMPT_CHUNKS + 1))


def test_workflow_text_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setattr("engine.workflow.MAX_FILE_BYTES", 100)
    with pytest.raises(WorkflowError, match="too large"):
        parse_document('{"schema_version": 1, "nodes": {}, "ui": {"x": "' + "é" * 40 + '"}}')
    assert parse_document('{"schema_version": 1, "nodes": {}}')
    assert MAX_FILE_BYTES == 64 * 1024 * 1024


# malformed model files ----------------------------------------------------------------------------


def _model_copy(tmp_path: Path) -> Path:
    """The built-in model's JSON files (no weights) in a temp folder."""
    folder = tmp_path / "model"
    for f in BUILTIN.rglob("*.json"):
        if f.name == "vocab.json":
            continue
        target = folder / f.relative_to(BUILTIN)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    return folder


MALFORMED = {
    "utf8": ("model_index.json", b'{"_class_name": "\xff"}', "model_index.json: not UTF-8 text"),
    "json": ("model_index.json", b'{"_class_name": ', "model_index.json: invalid JSON at line 1"),
    "list": ("model_index.json", b"[1, 2]", "expected a JSON object {...} of settings, found a "
             "list"),
    "class": ("model_index.json", b'{"_class_name": 5}',
              "field '_class_name' must be text, got an integer 5"),
    "channels": ("unet/config.json", b'{"in_channels": "four"}',
                 "unet/config.json: field 'in_channels' must be an integer, got text \"four\""),
    "prediction": ("scheduler/scheduler_config.json", b'{"prediction_type": "sideways"}',
                   "field 'prediction_type' must be one of 'epsilon', 'v_prediction', 'sample'"),
    "vae": ("vae/config.json", b'{"scaling_factor": "big"}', "field 'scaling_factor' must be a "
            "number"),
    "loom": ("loom.json", b'{"family": ["sd1"]}', "loom.json: field 'family' must be text"),
    "te": ("text_encoder/config.json", b'{"hidden_size": null}',
           "field 'hidden_size' must be an integer, got null"),
    "deep": ("model_index.json", b"[" * 100_000, "model_index.json: invalid JSON"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_model_files_name_the_file_and_field(tmp_path, case):
    from nodes.lib.model_files import checkpoint_problem

    rel, data, message = MALFORMED[case]
    folder = _model_copy(tmp_path)
    (folder / rel).write_bytes(data)
    problem = checkpoint_problem(folder)
    assert problem is not None and problem[0] == "path"
    assert message in problem[1] and str(folder / rel) in problem[1]
    # through a session: refused before anything runs, on Load Checkpoint's `path`
    s = Session()
    g = s.load(ROOT / "resources" / "workflows" / "default.json")
    s.set(g, "checkpoint.path", str(folder))
    with pytest.raises(ValidationError) as info:
        s.run(g, output_dir=tmp_path / "out")
    (p,) = info.value.problems
    assert (p.node_id, p.node_type, p.input) == ("checkpoint", "loaders.checkpoint", "path")
    assert message in p.message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["utf8", "list", "class", "channels", "prediction"])
def test_the_loader_itself_raises_checkpoint_error_naming_the_file(tmp_path, case):
    pytest.importorskip("torch")
    from nodes.lib.checkpoints import LOAD_ERRORS, CheckpointError, inspect_checkpoint

    rel, data, message = MALFORMED[case]
    folder = _model_copy(tmp_path)
    (folder / rel).write_bytes(data)
    if case == "channels":
        (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(CheckpointError) as info:
        inspect_checkpoint(folder)
    assert message in str(info.value) and isinstance(info.value, LOAD_ERRORS)


def test_the_builtin_model_and_configs_pass_the_checks():
    from nodes.lib.model_files import checkpoint_problem

    assert checkpoint_problem(BUILTIN) is None
    for folder in (ROOT / "resources" / "configs").iterdir():
        if folder.is_dir():
            assert checkpoint_problem(folder) is None, folder


# end to end: absurd values refused at once, exit 2, nothing written -------------------------------


def _loom(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "main.py", "run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, errors="replace")


def _with_prompt(tmp_path: Path, text: str) -> Path:
    """The default workflow with a prompt too long for a command-line argument (1 MB)."""
    doc = json.loads((ROOT / "resources" / "workflows" / "default.json").read_text("utf-8"))
    doc["nodes"]["prompt"]["inputs"]["text"] = text
    path = tmp_path / "long_prompt.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _cases(tmp_path: Path) -> dict[str, tuple[list[str], str, str]]:
    """name -> (extra arguments, where, message): one per absurd value."""
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    (tmp_path / "a_file").write_text("x")
    out = str(tmp_path / "out")
    return {
        "noise": (["--set", "noise.width=16384", "--set", "noise.height=16384",
                   "--set", "noise.batch=64", "--out", out],
                  "node 'noise' (latents.noise) input 'width'", "of memory, but only"),
        "prompt": ([str(_with_prompt(tmp_path, "a " * 500_000)), "--out", out],
                   "node 'prompt' (conditioning.text_encode) input 'text'",
                   "the limit is 20,000 characters"),
        "long_name": (["--set", "checkpoint.path=" + "x" * 300, "--out", out],
                      "node 'checkpoint' (loaders.checkpoint) input 'path'",
                      "is 300 bytes long"),
        "loop_out": (["--out", str(tmp_path / "loop_a")], "node 'save' (image.save)",
                     "is a symlink loop"),
        "file_out": (["--out", str(tmp_path / "a_file")], "node 'save' (image.save)",
                     "is a file, not a folder"),
        "prefix": (["--set", "save.prefix=../escape", "--out", out],
                   "node 'save' (image.save) input 'prefix'", "must not contain '..'"),
        "big_folder": (["--set", "checkpoint.path=/usr", "--out", out],
                       "node 'checkpoint' (loaders.checkpoint) input 'path'",
                       "/usr is a folder without model_index.json"),
    }


def test_absurd_values_through_main_py_run_exit_2_naming_node_and_input(tmp_path):
    for name, (args, where, message) in _cases(tmp_path).items():
        proc = _loom(*args)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, name
        assert where in proc.stderr and message in proc.stderr, (name, proc.stderr[-2000:])
        assert proc.stdout == "", name
    assert not (tmp_path / "out").exists()


def test_nul_and_surrogate_paths_in_a_workflow_file_exit_2(tmp_path):
    doc = json.loads((ROOT / "resources" / "workflows" / "default.json").read_text("utf-8"))
    for value, message in (("a\0b", "NUL character"), ("x\ud800y", "lone surrogate")):
        doc["nodes"]["checkpoint"]["inputs"]["path"] = value
        wf = tmp_path / "wf.json"
        wf.write_text(json.dumps(doc), encoding="utf-8")  # ASCII escapes: "\u0000", "\ud800"
        proc = _loom(str(wf), "--out", str(tmp_path / "out"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "node 'checkpoint' (loaders.checkpoint) input 'path'" in proc.stderr
        assert message in proc.stderr


@pytest.mark.skipif(IS_ROOT, reason="running as root: permissions do not apply (the "
                    "regular-file output folder case covers the refusal for root)")
def test_an_unwritable_output_folder_through_main_py_run(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        proc = _loom("--out", str(ro / "sub"), "--set", "noise.batch=1")
        assert proc.returncode == 2, proc.stderr
        assert "node 'save' (image.save)" in proc.stderr and "not writable" in proc.stderr
    finally:
        os.chmod(ro, 0o700)


def test_absurd_values_through_the_python_api(tmp_path):
    s = Session()
    default = ROOT / "resources" / "workflows" / "default.json"
    cases = [
        ({"noise.width": 16384, "noise.height": 16384, "noise.batch": 64}, None,
         ("noise", "width"), "of memory"),
        ({"prompt.text": "a " * 500_000}, None, ("prompt", "text"), "20,000 characters"),
        ({"checkpoint.path": "a\0b"}, None, ("checkpoint", "path"), "NUL"),
        ({"checkpoint.path": "\udcff"}, None, ("checkpoint", "path"), "lone surrogate"),
        ({"checkpoint.path": "n" * 300}, None, ("checkpoint", "path"), "300 bytes"),
        ({"save.prefix": "a/b"}, None, ("save", "prefix"), "without folders"),
        ({}, tmp_path / "f", ("save", None), "is a file, not a folder"),
    ]
    (tmp_path / "f").write_text("x")
    for sets, out, where, message in cases:
        g = s.load(default)
        for target, value in sets.items():
            s.set(g, target, value)
        with pytest.raises(ValidationError) as info:
            s.run(g, output_dir=out or tmp_path / "out")
        (p,) = info.value.problems
        assert (p.node_id, p.input) == where and message in p.message, str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_workflow_path_that_is_a_fifo_or_a_device_is_refused_without_reading(tmp_path):
    from engine.workflow import read_document

    fifo = tmp_path / "wf.json"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(WorkflowError, match="cannot read file: not a regular file"):
            read_document(path)
    with pytest.raises(WorkflowError, match="cannot read file"):
        read_document(tmp_path / "a\0b.json")
