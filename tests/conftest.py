"""Test-wide settings: offline hub, offscreen Qt, repository root importable."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# every run in the tests checks that no node changes a value it was given (engine.integrity)
os.environ.setdefault("LOOM_CHECK_MUTATIONS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_exit_status = 0


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config):
    # PySide6 6.12 on Python 3.11 can crash while the interpreter tears down Qt objects after
    # the last test (SIGSEGV at exit, results already reported). Leave with pytest's own status
    # once everything is written, instead of letting finalization turn a green run red.
    if "PySide6" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
