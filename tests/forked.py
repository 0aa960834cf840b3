"""``python -m module ...`` or ``python script.py ...`` run in a fork of the test process, for the suite's time.

Why: a ``python -m monai.bundle run ...`` subprocess on the tests' tiny data spends most of its time importing monai,
torch and what MONAI imports eagerly (with the serving extras: holoscan, cupy, MLflow), and the suite runs dozens of
them. A fork of the test process has those modules loaded already and is still a process of its own: the command line
is parsed by the same entry point (``runpy``, as ``-m`` runs it), nothing it changes (seeds, logging, the working
folder, environment variables, global torch settings) reaches the tests, a crash or ``sys.exit`` gives an exit code,
and a timeout kills it.

What differs from a fresh interpreter, and why it does not matter for the tests that use this: modules the tests
imported are not imported again (the same files); torch keeps the test process's one thread (the subprocesses ran
with ``OMP_NUM_THREADS=1`` anyway); exit handlers registered before the fork are dropped, so that the child cannot
clean up the parent's temporary folders; the parent's garbage is collected before the fork and the child's collector
leaves the parent's objects alone, as their destructors may wait for threads that a fork does not have (onnxruntime's
session did). Tests of process behaviour (SIGKILL, torchrun, a shell script, another working folder's ``sys.path``,
fresh-process determinism) keep real subprocesses, and so do runs that load data with worker threads or processes
(``num_workers`` above 0: tests/test_foreign_teacher.py's default runs; one failed once in a fork while loading its
data, in a whole-suite run, and the cause was not found) and every run once the test process has initialised CUDA
(a fork cannot use it then).
"""

from __future__ import annotations

import atexit
import gc
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _exit_code(error: SystemExit) -> int:
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
    return 1


def _redirect_output(out_fd: int, err_fd: int) -> None:
    """The child's fds 1 and 2, ``sys.stdout``/``sys.stderr`` and the log handlers made before the fork (MONAI's
    loggers get theirs at import) write to the given files instead of the test process's (pytest's capture)."""
    stdouts = {id(sys.stdout), id(sys.__stdout__)}
    stderrs = {id(sys.stderr), id(sys.__stderr__)}
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdin = open(os.devnull)
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), line_buffering=True)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for handler in (h for logger in loggers for h in getattr(logger, "handlers", [])):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            stream = handler.stream
            if id(stream) in stdouts:
                handler.setStream(sys.stdout)
            elif id(stream) in stderrs or type(stream).__module__.startswith("_pytest"):
                handler.setStream(sys.stderr)


def _run_in_child(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None, out_fd: int, err_fd: int) -> int:
    gc.freeze()  # nor does the child's collector look at what the test process made
    _redirect_output(out_fd, err_fd)
    atexit._clear()  # the parent's (temporary folders' clean-up among them) are not the child's to run
    os.chdir(cwd)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    code = 1
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            script = str(Path(cwd, args[0]).resolve())
            sys.argv = [args[0], *args[1:]]
            sys.path.insert(0, str(Path(script).parent))  # as `python script.py` puts its folder first
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as error:
        code = _exit_code(error)
    except BaseException:
        traceback.print_exc()
    try:  # what interpreter shutdown does before exiting: wait for the run's own threads, then its exit handlers
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    return code


def run_python(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    stderr_to_stdout: bool = False,
) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)``
    run in a fork of this process (module docstring); ``args`` start with ``-m module`` or a script's path.
    ``stderr_to_stdout``: both in ``stdout``, interleaved as written (``stderr=subprocess.STDOUT``)."""
    if args[0].startswith("-") and args[0] != "-m":
        raise ValueError(f"only `-m module` or a script runs in a fork, not {args[0]}")
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():  # CUDA cannot be used in a fork then
        return subprocess.run(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        gc.collect()  # earlier tests' garbage is freed here, not in the child (module docstring)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the test
            code = 1
            try:
                code = _run_in_child(args, cwd, env, out.fileno(), (out if stderr_to_stdout else err).fileno())
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired([sys.executable, *args], timeout)
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = None if stderr_to_stdout else err.read().decode(errors="replace")
    return subprocess.CompletedProcess([sys.executable, *args], os.waitstatus_to_exitcode(status), stdout, stderr)


class ForkingSubprocess:
    """Stands in for the ``subprocess`` module of a script that runs ``python -m monai.bundle ...`` itself
    (scripts/learning_curves/experiment.py: ``monkeypatch.setattr(experiment, "subprocess", ForkingSubprocess)``):
    its ``run`` runs each command in a fork (``run_python``), output written where the script asked."""

    STDOUT = subprocess.STDOUT

    @staticmethod
    def run(
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        stdout: Any = None,
        stderr: Any = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess:
        if command[0] != sys.executable or not hasattr(stdout, "write") or stderr != subprocess.STDOUT:
            raise NotImplementedError(f"only `python ...` with its output to a file: {command}")
        result = run_python(command[1:], cwd=cwd, env=env, timeout=timeout or 3600, stderr_to_stdout=True)
        stdout.write(result.stdout)
        stdout.flush()
        return result
