"""``echo-pipeline chat --web``: 127.0.0.1 on a free port, printed; clear 400s; Ctrl-C stops it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from echo_pipeline.infra.paths import PROJECT_ROOT
from echo_pipeline.operations.servers import chat_page_command


def _post(url: str, payload: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def page_server(tmp_path):
    env = os.environ | {"ECHO_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen(
        [sys.executable, "-m", "echo_pipeline.operations.cli", "chat", "--web"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"Chat page\s+(http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        yield process, match[1]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_the_page_listens_on_localhost_and_answers_bad_requests_clearly(page_server):
    process, url = page_server
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=5) as response:
                assert "Which one is me?" in response.read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    with urllib.request.urlopen(url + "/api/voices", timeout=30) as response:
        assert json.loads(response.read()) == {"voices": []}
    status, body = _post(url + "/api/reply", {"voice": "demo|chatml", "message": "hi"})
    assert status == 400 and body["error"].startswith("no adapter 'demo|chatml'")
    status, body = _post(url + "/api/game/judge", {"round_id": "nope", "choice": "left"})
    assert status == 400 and "unknown or already judged" in body["error"]
    status, body = _post(url + "/api/rate", ["not", "an", "object"])
    assert status == 400 and body["error"] == "the request body is not a JSON object"

    process.send_signal(signal.SIGINT)  # Ctrl-C
    assert process.wait(timeout=30) == 0
    assert "chat page stopped" in process.stdout.read()


def test_a_taken_port_is_one_clear_line(tmp_path):
    from echo_pipeline.operations.web.server import bind

    taken = bind()
    try:
        port = taken.getsockname()[1]
        result = subprocess.run(
            chat_page_command(port),
            cwd=PROJECT_ROOT,
            env=os.environ | {"ECHO_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"echo-pipeline: 127.0.0.1:{port}: cannot listen (Address already in use); "
        "pick another --port"
    )


def test_the_code_location_imports_nothing_of_the_page():
    probe = (
        "import sys, echo_pipeline.definitions\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')"
        " or m.startswith('echo_pipeline.operations.web')])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
