"""`ditscale serve --detach` starts one background service, where none already listens (no Ray is started here)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve.cli.serve import build_parser, child_argv, main


@pytest.mark.parametrize("flag", ["--detach", "--detac", "--det", "--d"])
def test_the_background_process_is_not_told_to_detach_again_however_the_flag_was_spelt(flag):
    # argparse takes an abbreviation: a child given --det detached again, and so on, each in its own session.
    argv = ["--checkpoint", "/ckpt", flag, "--port", "8123"]
    assert build_parser().parse_args(argv).detach
    child = child_argv(argv)
    assert child == ["--checkpoint", "/ckpt", "--port", "8123"]
    assert not build_parser().parse_args(child).detach


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_detach_refuses_a_port_something_already_answers_on(tmp_path, monkeypatch, capsys):
    # An earlier service's /healthz answered the first poll: the new, failing, one was reported as up.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["--checkpoint", str(tmp_path / "ckpt"), "--port", str(port), "--detach"])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2
    assert f"--port {port}: 127.0.0.1:{port} is already in use" in capsys.readouterr().err
    assert list(tmp_path.glob("ditscale-serve-*.log")) == []  # no background process was started


@pytest.mark.slow
def test_sigterm_while_deploying_stops_the_command(tmp_path):
    # SIGTERM only set an event that was read after deploy() returned: a service stopped while starting (a --detach
    # start past its --ready-timeout) came up anyway and was killed with SIGKILL a minute later, Ray and all.
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, free_port
    from tests.serve._helpers import class_checkpoint

    ckpt = class_checkpoint(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve.cli.serve", "--checkpoint", ckpt, "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    said = []
    try:
        for line in proc.stdout:  # the command's own progress line is the signal to stop it
            said.append(line)
            if line.startswith("ditscale serve: deploying"):
                proc.send_signal(signal.SIGTERM)
                break
        said.extend(proc.stdout)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(said)
    assert code == 0, out
    assert "ditscale serve: deploying" in out and "ready at" not in out, out  # stopped before it came up
