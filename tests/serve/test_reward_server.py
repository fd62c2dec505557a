"""The reward server on 127.0.0.1 and its client: a scored batch, the health check, and a clear error (or a
bounded retry) for each bad reply: non-JSON, wrong length, NaN, timeout, connection refused."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignment.serve.client import RewardClient, RewardServerError
from alignment.serve.reward import main as serve_main


@pytest.fixture(scope="module")
def server():
    srv = serve_main(["--reward_funcs", "accuracy", "length", "--reward_weights", "1.0", "0.5",
                      "--reward_target_length", "4", "--port", "0"], block=False)
    yield srv
    srv.stop()


def test_scores_a_batch_and_answers_health(server):
    assert server.url.startswith("http://127.0.0.1:")  # loopback by default
    client = RewardClient(server.url, timeout=5, retries=0)
    assert client.health() == {"status": "ok", "rewards": ["accuracy", "length"], "weights": [1.0, 0.5]}
    scores = client(["q1", "q2", "q3"], ["#### 18", "it is 7", "12"], solution=["18", "8", "12"],
                    completion_lengths=[4, 8, 2])
    assert scores == [1.0, 0.0 + 0.5 * -1.0, 1.0 + 0.5 * -0.5]


class _Bad(BaseHTTPRequestHandler):
    calls = 0
    mode = "ok"

    def do_POST(self):  # noqa: N802
        type(self).calls += 1
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = {"nonjson": b"<html>oops</html>", "short": b'{"scores": [1.0]}', "nan": b'{"scores": [1.0, NaN]}',
                "text": b'{"scores": [1.0, "high"]}', "flaky": b'{"scores": [0.5, 0.25]}'}.get(self.mode)
        if self.mode == "slow":
            time.sleep(1.0)
            body = b'{"scores": [0, 0]}'
        if self.mode == "flaky" and type(self).calls == 1:
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        return


@pytest.fixture(scope="module")
def bad_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Bad)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("mode, message", [
    ("nonjson", "the reply is not JSON"),
    ("short", "returned 1 scores for 2 completions"),
    ("nan", "NaN"),
    ("text", "score 1 is not a number"),
])
def test_bad_replies_are_clear_errors_naming_the_url(bad_server, mode, message):
    _Bad.mode, _Bad.calls = mode, 0
    with pytest.raises(RewardServerError, match=message) as info:
        RewardClient(bad_server, timeout=5, retries=2, backoff=0.01)(["a", "b"], ["x", "y"])
    assert bad_server in str(info.value)
    assert _Bad.calls == 1  # a malformed answer is not retried


def test_timeout_is_retried_a_bounded_number_of_times(bad_server):
    _Bad.mode, _Bad.calls = "slow", 0
    with pytest.raises(RewardServerError, match=r"no reply within 0.2s \(2 attempts\)") as info:
        RewardClient(bad_server, timeout=0.2, retries=1, backoff=0.01)(["a", "b"], ["x", "y"])
    assert bad_server in str(info.value)
    time.sleep(1.0)  # let the slow handlers finish
    assert _Bad.calls == 2


def test_a_server_error_is_retried_then_succeeds(bad_server):
    _Bad.mode, _Bad.calls = "flaky", 0
    assert RewardClient(bad_server, timeout=5, retries=1, backoff=0.01)(["a", "b"], ["x", "y"]) == [0.5, 0.25]
    assert _Bad.calls == 2


def test_connection_refused_after_bounded_retries():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(RewardServerError, match=r"connection refused.*\(3 attempts\)") as info:
        RewardClient(url, timeout=1, retries=2, backoff=0.01)(["a"], ["x"])
    assert url in str(info.value)


def test_server_arguments_are_checked():
    from alignment.utils.cli import ArgumentError

    with pytest.raises(ArgumentError, match="nothing to serve"):
        serve_main([], block=False)
    with pytest.raises(ArgumentError, match="reward_funcs entry 'nope' is not valid; allowed values: accuracy"):
        serve_main(["--reward_funcs", "nope"], block=False)
