"""Framing and the stdout guard, on bytes and real pipes."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sidecar.transport import ChannelClosed, LineTooLong, LineWriter, read_frames


class Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, like a pipe under load."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._step, self._position = data, step, 0

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        piece = self._data[
            self._position : self._position + min(self._step, size if size > 0 else self._step)
        ]
        self._position += len(piece)
        return piece


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_lines_split_across_reads_are_joined(step: int) -> None:
    data = "first\nsecond é 日本\r\n\nthird".encode()
    assert list(read_frames(Trickle(data, step), 100)) == [b"first", "second é 日本".encode(), b"third"]


def test_over_long_line_is_reported_and_skipped() -> None:
    data = b"ok\n" + b"x" * 50 + b"\nnext\n"
    frames = list(read_frames(Trickle(data, 8), 20))
    assert frames == [b"ok", LineTooLong(50, 20), b"next"]


def test_over_long_final_line_without_newline() -> None:
    assert list(read_frames(io.BytesIO(b"y" * 30), 10)) == [LineTooLong(30, 10)]


def test_line_of_exactly_the_limit_passes() -> None:
    assert list(read_frames(io.BytesIO(b"z" * 10 + b"\n"), 10)) == [b"z" * 10]


def test_writer_reports_a_closed_channel_and_stays_closed() -> None:
    class Broken(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, _data: object) -> int:
            raise BrokenPipeError

    writer = LineWriter(Broken())
    with pytest.raises(ChannelClosed):
        writer.write_line(b"{}")
    assert writer.closed
    with pytest.raises(ChannelClosed):
        writer.write_line(b"{}")


def test_protect_stdout_sends_stray_output_to_stderr() -> None:
    program = (
        "import os, sys\n"
        "from sidecar.transport import protect_stdout, LineWriter\n"
        "protocol = LineWriter(protect_stdout())\n"
        "print('stray print')\n"
        "os.write(1, b'native write\\n')\n"
        'protocol.write_line(b\'{"jsonrpc":"2.0"}\')\n'
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30, check=True)
    assert done.stdout == b'{"jsonrpc":"2.0"}\n'
    assert b"stray print" in done.stderr and b"native write" in done.stderr


def test_stdin_from_a_regular_file_is_read_too(tmp_path: Path) -> None:
    # A pipe is read on the event loop; a file cannot be polled and is read on a thread.
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1.1"}}\n'
        b'{"jsonrpc":"2.0","id":2,"method":"ping"}'  # the last line without its newline
    )
    with requests.open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "sidecar"], stdin=stdin, capture_output=True, timeout=30, check=True
        )
    responses = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [response["id"] for response in responses] == [1, 2]
    assert responses[1]["result"] == {}


def test_one_socket_for_stdin_and_stdout_works() -> None:
    # Reading such a socket non-blocking would make the writes non-blocking too: it is read on a thread.
    host, child = socket.socketpair()
    with host, child:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar"], stdin=child, stdout=child, stderr=subprocess.DEVNULL
        )
        try:
            host.sendall(
                b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1.1"}}\n'
                b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n'
            )
            host.settimeout(30)
            received = b""
            while received.count(b"\n") < 2:
                received += host.recv(65536)
            assert [orjson.loads(line)["id"] for line in received.splitlines()] == [1, 2]
        finally:
            host.shutdown(socket.SHUT_WR)
            assert process.wait(timeout=10) == 0
