"""What a fresh machine installs is what Loom needs: requirements.txt and pyproject.toml declare
the same packages, every third-party import in the code (module level or inside a function) is
declared, every declared package is used, and the code paths that need optional packages of
the libraries (diffusers' schedulers) work in the installed environment.

A package removed from requirements.txt fails test_every_import_is_declared (or, for a package
the libraries need without declaring it, test_indirect_requirements_are_declared); a package
missing from the environment fails the scheduler and import tests (the "lms" scheduler needs
scipy, which diffusers does not install)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import torch

from nodes.lib.sampler import _step_kwargs
from nodes.lib.schedules import SCHEDULER_NAMES, SCHEDULERS, SchedulerSpec, plan
from tools import readme_commands

ROOT = Path(__file__).resolve().parent.parent

# Where the code lives: imports in RUNTIME must be in requirements.txt; imports in DEV may be in
# requirements-dev.txt (tests, tools, benchmarks).
RUNTIME = ("engine", "nodes", "editor", "main.py")
DEV = ("tools", "tests", "benchmarks")
FIRST_PARTY = {"engine", "nodes", "editor", "main", "tools", "tests", "benchmarks", "resources"}

# Import name -> distribution name where they differ (names compared after PEP 503 normalising).
DIST_OF = {
    "PIL": "pillow",
    "PySide6": "PySide6-Essentials",
    "shiboken6": "PySide6-Essentials",
    "yaml": "pyyaml",
    "pytestqt": "pytest-qt",
    "open_clip": "open_clip_torch",
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
}

# Needed on Loom's code paths by the libraries it uses, which do not install them themselves.
INDIRECT = {
    "scipy": "diffusers' LMSDiscreteScheduler (scheduler 'lms') is a stub raising ImportError "
             "without scipy",
    "pyyaml": "diffusers.loaders.single_file_utils (single-file SD checkpoints) imports yaml",
}

# Dev requirements used without an import statement.
USED_WITHOUT_IMPORT = {
    "pytest-qt": "the qtbot fixture (a pytest plugin)",
    "ruff": "the linter (pyproject's [tool.ruff])",
}

# The documented optional exception: the tokenizer cross-check against open_clip (README's
# ci:extras command installs them; the tests skip without them). Allowed only in these files.
OPTIONAL = {"ftfy": {"tests/test_tokenizer.py"}, "open_clip_torch": {"tests/test_tokenizer.py"}}

# Optional features: pyproject extras (other than dev) that Loom's code may import, only in these
# files and only inside functions (Loom runs without them); requirements-dev.txt installs them
# so that their tests run in CI.
FEATURES = {"ray": {"engine/batch_ray.py"}}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")


def parse_requirement(text: str) -> tuple[str, tuple[str, ...]]:
    """(normalised name, sorted specifier clauses) of one PEP 508 requirement."""
    m = REQ_LINE.match(text.strip())
    assert m, f"cannot parse requirement {text!r}"
    spec = tuple(sorted(c.replace(" ", "") for c in m.group(3).split(",") if c.strip()))
    return normalise(m.group(1)), spec


def read_requirements(path: Path, follow: bool = False) -> dict[str, tuple[str, ...]]:
    """A requirements file's packages; with `follow`, also those of the files it `-r`s."""
    found: dict[str, tuple[str, ...]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            if follow:
                found.update(read_requirements(path.parent / line.split(None, 1)[1], True))
            continue
        assert not line.startswith("-"), f"{path.name}: unexpected option {line!r}"
        name, spec = parse_requirement(line)
        assert name not in found, f"{path.name} lists {name} twice"
        found[name] = spec
    return found


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _listed(reqs: list[str]) -> dict[str, tuple[str, ...]]:
    found = dict(parse_requirement(r) for r in reqs)
    assert len(found) == len(reqs), "a package is listed twice"
    return found


def _files(where: str) -> list[Path]:
    p = ROOT / where
    return [p] if p.is_file() else sorted(p.rglob("*.py"))


def third_party_imports(where: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level third-party import names in these files and folders (module level, inside
    functions, under `if`/`try`), each with the files that import it."""
    found: dict[str, set[str]] = {}
    for top in where:
        for path in _files(top):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    head = name.split(".")[0]
                    if head in sys.stdlib_module_names or head in FIRST_PARTY or \
                            head == "__future__":
                        continue
                    found.setdefault(head, set()).add(path.relative_to(ROOT).as_posix())
    return found


def runtime_imports() -> dict[str, set[str]]:
    """third_party_imports(RUNTIME) without the optional features' imports in their own
    modules (FEATURES)."""
    imports = third_party_imports(RUNTIME)
    for dist, files in FEATURES.items():
        if dist in imports:
            imports[dist] -= files
            if not imports[dist]:
                del imports[dist]
    return imports


def distribution(import_name: str) -> str:
    return normalise(DIST_OF.get(import_name, import_name))


def undeclared(imports: dict[str, set[str]], declared: set[str]) -> dict[str, set[str]]:
    """The imports whose distribution is not declared (the optional exception aside)."""
    missing = {}
    for name, files in imports.items():
        dist = distribution(name)
        if dist in declared:
            continue
        rest = files - OPTIONAL.get(dist, set())
        if rest:
            missing[f"{name} ({dist})"] = rest
    return missing


# --- requirements.txt and pyproject.toml mirror each other --------------------------------------


def test_requirements_txt_mirrors_pyproject_dependencies() -> None:
    txt = read_requirements(ROOT / "requirements.txt")
    toml = _listed(pyproject()["project"]["dependencies"])
    assert txt == toml


def test_requirements_dev_mirrors_pyproject_dev_extra() -> None:
    text = (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")
    assert re.search(r"^-r requirements\.txt\s*$", text, re.M), "dev must include the runtime"
    dev = read_requirements(ROOT / "requirements-dev.txt")
    extras = pyproject()["project"]["optional-dependencies"]
    toml = _listed(extras["dev"])
    for feature in FEATURES:  # the optional features' extras, installed for their tests
        toml.update(_listed(extras[feature]))
    assert set(extras) == {"dev", *FEATURES}, "an extra that is neither dev nor in FEATURES"
    assert dev == toml
    assert not set(dev) & set(read_requirements(ROOT / "requirements.txt"))


def test_requirement_parser() -> None:
    assert parse_requirement("torch>=2.4,<2.14") == ("torch", ("<2.14", ">=2.4"))
    assert parse_requirement("PySide6_Essentials >= 6.7") == ("pyside6-essentials", (">=6.7",))
    assert parse_requirement("foo[bar]<2; python_version<'3.12'") == ("foo", ("<2",))
    assert parse_requirement("ftfy") == ("ftfy", ())


def test_torch_keeps_its_upper_bound() -> None:
    # An open range lets a fresh machine pull a multi-GB CUDA build instead of 2.13.0 (CPU).
    spec = read_requirements(ROOT / "requirements.txt")["torch"]
    assert any(c.startswith("<") for c in spec) and "<2.14" in spec, spec


# --- every import is declared, every declaration is used ----------------------------------------


def test_import_scan_sees_imports_inside_functions() -> None:
    found = third_party_imports(("nodes",))
    # nodes/lib/checkpoints.py imports these only inside functions
    assert "nodes/lib/checkpoints.py" in found["accelerate"]
    assert "nodes/lib/checkpoints.py" in found["safetensors"]
    assert "editor/app.py" in third_party_imports(("editor",))["qasync"]  # inside a function
    assert "json" not in found and "nodes" not in found  # stdlib and first party are left out


def test_every_import_is_declared() -> None:
    runtime = set(read_requirements(ROOT / "requirements.txt"))
    everything = set(read_requirements(ROOT / "requirements-dev.txt", follow=True))
    missing = undeclared(runtime_imports(), runtime)
    assert not missing, f"imported by Loom, not in requirements.txt: {missing}"
    missing = undeclared(third_party_imports(DEV), everything)
    assert not missing, f"imported by tests/tools, not in requirements(-dev).txt: {missing}"


def test_optional_features_are_imported_lazily() -> None:
    # `import engine.batch_ray` must work without Ray: it imports ray only inside functions
    for dist, files in FEATURES.items():
        for name in files:
            tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
            top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            heads = {(a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
                     for n in top for a in n.names}
            assert dist not in heads, f"{name} imports {dist} at module level"
            assert dist in third_party_imports((name,)), f"{name} no longer uses {dist}"


def test_indirect_requirements_are_declared() -> None:
    runtime = set(read_requirements(ROOT / "requirements.txt"))
    assert set(INDIRECT) <= runtime, {k: INDIRECT[k] for k in set(INDIRECT) - runtime}


def test_every_declared_package_is_used() -> None:
    # Removing any declared package must fail one of the tests above: each one is imported by
    # the code or needed indirectly (and a stale requirement shows up here).
    runtime = set(read_requirements(ROOT / "requirements.txt"))
    used = {distribution(n) for n in runtime_imports()} | set(INDIRECT)
    assert runtime == used, (f"declared, never used: {runtime - used}; "
                             f"used, not declared: {used - runtime}")
    dev = set(read_requirements(ROOT / "requirements-dev.txt"))
    used_dev = {distribution(n) for n in third_party_imports(DEV)} | set(USED_WITHOUT_IMPORT)
    assert dev <= used_dev, f"dev requirements never used: {dev - used_dev}"


def test_optional_exception_is_what_the_readme_installs() -> None:
    extras = readme_commands.command("extras")
    assert "--no-deps open_clip_torch==3.3.0" in extras and "install ftfy" in extras, extras
    declared = set(read_requirements(ROOT / "requirements-dev.txt", follow=True))
    assert not set(OPTIONAL) & declared  # optional, so not declared
    assert "open_clip" in (ROOT / "tests" / "test_tokenizer.py").read_text(encoding="utf-8")


def test_declared_packages_are_installed() -> None:
    # The environment the tests run in is the one requirements(-dev).txt describes.
    missing = []
    for name in read_requirements(ROOT / "requirements-dev.txt", follow=True):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    assert not missing, f"declared but not installed: {missing}"


# --- every scheduler a user can pick works in this environment ----------------------------------

# stable-diffusion-v1-5's scheduler_config.json
SD_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_scheduler_builds_and_steps(name: str) -> None:
    spec = SchedulerSpec(name=name, config=dict(SD_SCHEDULER_CONFIG), steps=4)
    p = plan(spec, torch.device("cpu"), has_init=False)  # builds it and calls set_timesteps
    sched = p.scheduler
    expected = SCHEDULERS[name][0] or SD_SCHEDULER_CONFIG["_class_name"]
    assert type(sched).__name__ == expected
    assert len(p.timesteps) >= 4
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, 8, 8), generator=gen) * sched.init_noise_sigma
    kwargs = _step_kwargs(sched, gen, 0.0)
    for t in p.timesteps:  # every step: LMS integrates its coefficients with scipy here
        x = sched.scale_model_input(latents, t)
        latents = sched.step(0.1 * x, t, latents, **kwargs, return_dict=False)[0]
    assert torch.isfinite(latents).all()


# --- every module imports --------------------------------------------------------------------


def _modules() -> list[str]:
    names = ["main"]
    for top in ("engine", "nodes", "editor"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


@pytest.mark.parametrize("module", _modules())
def test_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_module_list_covers_nodes_lib_and_editor() -> None:
    names = _modules()
    assert "nodes.lib.schedules" in names and "editor.app" in names and "engine.api" in names
