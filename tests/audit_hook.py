"""A Python audit hook that reports what a sidecar must never do for a request.

``audited_env`` returns the environment for a process whose ``sitecustomize``
installs the hook before any other code runs: starting a program (subprocess,
exec, spawn, fork, ``os.system``), touching the network (resolve, bind,
connect, send), and writing files (an ``open`` for writing, remove, rename,
mkdir, chmod, …). Each event seen becomes a line of a report file that the
hook opens before it starts watching (stderr may be redirected for a while: the
grammar check does that); ``violations`` reads it. Native code
(llama.cpp itself) raises no audit events: this watches the Python side, where
request data is interpreted.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["audited_env", "violations"]

_REPORT = "audit-report.txt"
_SITECUSTOMIZE = """\
import os
import sys

_report = os.open(os.environ["SIDECAR_AUDIT_REPORT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)

_WATCHED = (
    "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.system",
    "os.startfile", "pty.", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "http.client.connect",
    "urllib.Request", "ftplib.", "smtplib.", "os.remove", "os.rename", "os.rmdir", "os.mkdir",
    "os.truncate", "os.symlink", "os.link", "os.chmod", "os.chown", "os.chflags", "os.utime",
    "shutil.", "webbrowser.",
)
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _hook(event, args):
    if event == "open":
        path, _mode, flags = args
        # An int is a descriptor the process already holds (its own stdout, for one);
        # llama-cpp-python points output at /dev/null now and then.
        if isinstance(path, int) or path == os.devnull or not flags & _WRITES:
            return
    elif not event.startswith(_WATCHED):
        return
    os.write(_report, repr((event, args))[:300].encode("utf-8", "replace") + b"\\n")


sys.addaudithook(_hook)
"""


def audited_env(directory: Path) -> dict[str, str]:
    """Environment variables for a process watched by the hook; its files go in ``directory``."""
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
    return {
        "PYTHONPATH": path,
        "SIDECAR_AUDIT_REPORT": str(directory / _REPORT),
        # Without this, the first import of a module writes its bytecode cache: a legitimate write.
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def violations(directory: Path) -> list[str]:
    """The events the hook reported in the processes started with ``audited_env(directory)``."""
    report = directory / _REPORT
    # The hook creates the file as it starts: no file means nothing was watched.
    assert report.exists(), "the audit hook was never installed"
    return report.read_text(errors="replace").splitlines()
