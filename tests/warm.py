"""Warm starts for the app processes the tests launch: `python tests/warm.py <module> <args>` runs like
`python -m <module> <args>` (and `python tests/warm.py -c <code> <args>` like `python -c`), without paying
for the imports.

Launching an app costs a fresh interpreter seconds of CPU to import torch, Lightning (which pulls in
torch._dynamo, transformers and scipy) and Hydra: most of a tiny test run, and most of the suite's time. So
the test session starts one server that imports them once; a command is this small client, which hands the
server its argv, working folder, environment and its own stdin/stdout/stderr, then waits for the exit code.
The server forks a child that runs the module as `__main__` in that folder with that environment and those
files: the app's own code path from its first line, as a user's `python -m` would run it (a DDP launch
re-runs `python -m <module> <args>` for the other ranks, which tests/warm_python, the child's
`sys.executable`, warm-starts the same way). Signals sent to the client go on to the child
(a scheduler's SIGTERM or SIGUSR1, Ctrl-C); killing the client kills the child (within 50 ms), and a test
that must SIGKILL the app at an exact moment reads the child's pid (and process group) from $LGPT_TEST_WARM_PIDFILE.

What a warm child cannot show: anything an import does (warnings printed while importing, the time to fail
before importing torch, environment read at import time such as OMP_NUM_THREADS). Tests of those launch a
fresh process (`run_cli(..., fresh=True)`). Without the LGPT_TEST_WARM socket, the client execs a fresh
interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

ENV = "LGPT_TEST_WARM"  # the server's socket path
PIDFILE = "LGPT_TEST_WARM_PIDFILE"  # where the client writes its child's pid, for tests that SIGKILL the app
REAL_PYTHON = "LGPT_TEST_REAL_PYTHON"  # the interpreter behind tests/warm_python
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)


def client(module: str, args: list[str]) -> None:
    path = os.environ.get(ENV)
    if not path or not os.path.exists(path):
        os.execv(sys.executable, [sys.executable, *([] if module == "-c" else ["-m"]), module, *args])
    request = json.dumps({"module": module, "args": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        socket.send_fds(conn, [len(request).to_bytes(8, "big") + request], [0, 1, 2])
        reply = b""
        while chunk := conn.recv(64):
            reply += chunk
            if reply.startswith(b"pid ") and b"\n" in reply:  # the child's pid: signals sent here go on to it
                line, reply = reply.split(b"\n", 1)
                child = int(line[4:])
                if os.environ.get(PIDFILE):
                    with open(os.environ[PIDFILE] + ".tmp", "w") as f:
                        f.write(str(child))
                    os.rename(os.environ[PIDFILE] + ".tmp", os.environ[PIDFILE])
                for signum in FORWARDED:
                    signal.signal(signum, lambda signum, frame, child=child: os.kill(child, signum))
    code = int(reply) if reply else 1
    if code < 0:  # the child died of a signal: so does this process, as a fresh one would have
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _run_child(request: dict) -> int:
    """In the forked child, with fds 0-2 already the client's: run the module as __main__."""
    import atexit
    import runpy
    import traceback

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:1] = [request["cwd"], *extra]  # as `python -m` puts the working folder first
    sys.argv = [request["module"], *request["args"]]
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # read by torch's import in a fresh process
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    # What the app starts in turn (DDP ranks, submitit jobs, torchrun workers) is warm-started too.
    os.environ.setdefault(REAL_PYTHON, sys.executable)
    sys.executable = os.path.join(os.path.dirname(os.path.abspath(__file__)), "warm_python")
    try:
        if request["module"] == "-c":  # python -c CODE ARGS: sys.argv is ['-c', *ARGS]
            code_text = sys.argv.pop(1)
            exec(compile(code_text, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what interpreter exit would run (loggers finishing, temporary files)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return code


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = int.from_bytes(data[:8], "big")
    data = data[8:]
    while len(data) < size:
        data += conn.recv(size - len(data))
    return json.loads(data), fds


def _handle(conn: socket.socket) -> None:
    """In a forked monitor: fork the app child, send its pid, wait for it, send its exit code; kill it if the
    client goes."""
    import select

    request, fds = _recv_request(conn)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setpgrp()  # the app and whatever it starts (DDP ranks, loader workers): one group to kill
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os._exit(_run_child(request))
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
            return
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(1, socket.MSG_PEEK):  # the client is gone (killed, timed out)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def serve(path: str, owner: int) -> None:
    """Import what every app needs, then fork one monitor per request (requests may overlap). Ends when the
    session's pytest process (`owner`) does."""
    import hydra  # noqa: F401
    import lightning  # noqa: F401
    import torch  # noqa: F401

    import lightning_gpt.build  # noqa: F401
    import lightning_gpt.cli  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped as they end
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path + ".tmp")
        server.listen(16)
        os.rename(path + ".tmp", path)  # clients see the socket only once the imports are done
        server.settimeout(1.0)
        while _alive(owner):  # the pytest process of the session
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            if os.fork() == 0:
                server.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the monitor waits for its child
                try:
                    _handle(conn)
                finally:
                    os._exit(0)
            conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        client(sys.argv[1], sys.argv[2:])
