"""tests/forked.py, the fork that runs the tests' bundle commands: what it returns is what a subprocess returns."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.forked import ForkingSubprocess, run_python

SCRIPT = """
import os, sys
from pathlib import Path
print("argv", sys.argv[1:], "cwd", Path.cwd().name, "env", os.environ.get("FORKED_TEST"))
print("to stderr", file=sys.stderr)
os.environ["FORKED_LEAK"] = "1"
if sys.argv[1] == "exit":
    sys.exit(int(sys.argv[2]))
if sys.argv[1] == "message":
    sys.exit("stopped: a message")
if sys.argv[1] == "raise":
    raise RuntimeError("broken on purpose")
if sys.argv[1] == "sleep":
    import time
    time.sleep(60)
"""


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "work" / "script.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("argv, code", [(["exit", "0"], 0), (["exit", "3"], 3), (["message"], 1), (["raise"], 1)])
def test_exit_code_and_output_are_a_subprocess_s(script, argv, code):
    env = {**os.environ, "FORKED_TEST": "given"}
    forked = run_python(["script.py", *argv], cwd=script.parent, env=env)
    real = subprocess.run(
        [sys.executable, "script.py", *argv], cwd=script.parent, env=env, capture_output=True, text=True, timeout=60
    )
    assert forked.returncode == real.returncode == code
    assert forked.stdout == real.stdout == f"argv {argv} cwd work env given\n"
    assert forked.stderr.splitlines()[0] == real.stderr.splitlines()[0] == "to stderr"
    assert ("RuntimeError: broken on purpose" in forked.stderr) == (argv == ["raise"])
    assert ("stopped: a message" in forked.stderr) == (argv == ["message"])
    # nothing the command changed reaches this process
    assert Path.cwd() != script.parent and "FORKED_LEAK" not in os.environ and "FORKED_TEST" not in os.environ


def test_a_module_runs_as_python_m_runs_it(tmp_path):
    (tmp_path / "in.json").write_text('{"b": 1, "a": 2}')
    result = run_python(["-m", "json.tool", "--sort-keys", "--compact", "in.json"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, '{"a":2,"b":1}\n')


def test_a_command_past_its_timeout_is_killed(script):
    with pytest.raises(subprocess.TimeoutExpired):
        run_python(["script.py", "sleep"], cwd=script.parent, timeout=1)


def test_log_handlers_made_before_the_fork_write_to_the_command_s_output(script):
    logger = logging.getLogger("tests.forked.example")  # as MONAI's loggers get their handler at import
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        code = "import logging; logging.getLogger('tests.forked.example').warning('logged by the command')"
        script.write_text(code)
        result = run_python(["script.py"], cwd=script.parent)
    finally:
        logger.removeHandler(handler)
    assert result.returncode == 0 and result.stderr == "logged by the command\n"


def test_a_script_s_own_subprocess_run_becomes_a_fork_with_its_output_in_the_log(script, tmp_path):
    log = tmp_path / "run.log"
    with open(log, "a") as f:
        f.write("$ command\n")
        f.flush()
        command = [sys.executable, "script.py", "exit", "3"]
        result = ForkingSubprocess.run(command, cwd=script.parent, stdout=f, stderr=subprocess.STDOUT)
    assert result.returncode == 3
    assert log.read_text() == "$ command\nargv ['exit', '3'] cwd work env None\nto stderr\n"


class Cyclic:
    """Garbage only the cycle collector frees; its destructor writes the process it ran in."""

    def __init__(self, log: Path) -> None:
        self.log, self.me = log, self

    def __del__(self) -> None:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")


def test_garbage_made_before_the_fork_is_freed_in_this_process_not_the_child(script, tmp_path):
    log = tmp_path / "destructors.log"
    gc.disable()  # keep the cycle uncollected until the fork
    try:
        Cyclic(log)
        script.write_text("import gc; gc.collect()")  # the child collects everything it may
        assert run_python(["script.py"], cwd=script.parent).returncode == 0
    finally:
        gc.enable()
    assert log.read_text() == f"{os.getpid()}\n"  # once, here: a destructor waiting for threads cannot hang a fork
