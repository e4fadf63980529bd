"""Processes: each child in its own session, stopped with everything it started, and the
run of a command that stops them all however it ends (`supervised`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .common import LOG_DIR, ROOT, StackError


def proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, session, starttime) of a live (not zombie) process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # After "pid (comm) ": state, ppid, pgrp, session, ... starttime is field 22 overall.
    fields = data[data.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[3]), int(fields[19])


def _tree(root: int) -> dict[int, int]:
    """pid -> starttime of `root`, its descendants and every process in its session."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := proc_stat(int(name))) is not None:
            stats[int(name)] = s
    members = {pid: s[2] for pid, s in stats.items() if s[1] == root or pid == root}
    frontier = list(members)
    while frontier:
        parent = frontier.pop()
        for pid, s in stats.items():
            if s[0] == parent and pid not in members:
                members[pid] = s[2]
                frontier.append(pid)
    return members


def _alive(pid: int, starttime: int) -> bool:
    s = proc_stat(pid)
    return s is not None and s[2] == starttime


class Child:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path | None, graceful: int):
        self.name, self.popen, self.log, self.graceful = name, popen, log, graceful

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 40) -> str:
        if not self.log or not self.log.exists():
            return ""
        return "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-n:])


class Supervisor:
    """Starts children in their own sessions and stops each with every process under it."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        log: Path | None = None,
        graceful_signal: int = signal.SIGTERM,
        stdout: Any = None,
    ) -> Child:
        out: Any
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "wb")
        else:
            out = stdout
        try:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise StackError(f"cannot start {name}: {e}") from e
        finally:
            if log is not None:
                out.close()
        child = Child(name, popen, log, graceful_signal)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        """Asks the child to stop (its graceful signal), then TERM and KILL whatever is left of
        it: its descendants and every process in its session."""
        if child not in self.children:
            return
        pid = child.popen.pid
        members = _tree(pid)
        if child.running():
            try:
                os.kill(pid, child.graceful)
            except ProcessLookupError:
                pass
            self._wait_gone(members, timeout, child)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            members.update(_tree(pid))
            left = {p: t for p, t in members.items() if _alive(p, t)}
            if not left:
                break
            for p, t in left.items():
                if _alive(p, t):
                    try:
                        os.kill(p, sig)
                    except ProcessLookupError:
                        pass
            self._wait_gone(left, 5.0, child)
        try:
            child.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.children.remove(child)

    @staticmethod
    def _wait_gone(members: dict[int, int], timeout: float, child: Child) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child.popen.poll()
            if not any(_alive(p, t) for p, t in members.items()):
                return
            time.sleep(0.1)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def finish(self, child: Child, timeout: float) -> int:
        """Waits for a child started to run to completion, at most `timeout` seconds (then it
        is stopped and the answer is -1, said on stderr); its exit code."""
        try:
            return child.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  {child.name} did not finish within {timeout:.0f} s", file=sys.stderr)
            return -1
        finally:
            self.stop(child)

    def run(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
            on_line: Callable[[str], None] | None = None) -> int:
        """Runs a command to completion in its own session (so an interrupt stops all of it).
        With `on_line`, its output is read line by line, echoed, and passed to on_line."""
        child = self.start(name, argv, env=env, stdout=subprocess.PIPE if on_line else None)
        try:
            if on_line is not None:
                assert child.popen.stdout is not None
                for raw in child.popen.stdout:
                    line = raw.decode(errors="replace")
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    on_line(line)
            return child.popen.wait()
        finally:
            self.stop(child)


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def supervised(name: str, body: Callable[[Supervisor], int]) -> int:
    """Runs `body` with a Supervisor that stops every service and child it started however
    `body` ends (Ctrl-C and SIGTERM included); errors become an exit code."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    sup = Supervisor()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    try:
        return body(sup)
    except Interrupted as e:
        print(f"\n{name}: {e}, stopping", file=sys.stderr, flush=True)
        return 128 + e.signum
    except StackError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        sup.stop_all()
