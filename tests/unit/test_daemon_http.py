"""The daemon's HTTP endpoints, served in-process on a free loopback port."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request

import pytest

from reconciler.daemon.http import Endpoints, HttpEndpoints

SECRET = b"s3cret"


class Served:
    """Two servers (with and without a webhook secret) shared by this module's tests."""

    def __init__(self) -> None:
        self.alive = True
        self.hooks: list[str] = []
        self.signed = HttpEndpoints(("127.0.0.1", 0), self.endpoints(SECRET))
        self.unsigned = HttpEndpoints(("127.0.0.1", 0), self.endpoints(None))

    def endpoints(self, secret: bytes | None) -> Endpoints:
        return Endpoints(
            alive=lambda: self.alive,
            metrics=lambda: b"virt_reconcile_x 1.0\n",
            status=lambda: {"hosts": {}, "source": {}, "reconciledRevision": "r1"},
            on_webhook=lambda: self.hooks.append("webhook"),
            webhook_secret=secret,
        )


@pytest.fixture(scope="module")
def servers():
    served = Served()
    yield served
    served.signed.close()
    served.unsigned.close()


@pytest.fixture
def served(servers):
    servers.alive, servers.hooks[:] = True, []
    return servers


def request(url: str, body: bytes | None = None, signature: str = "") -> tuple[int, bytes]:
    headers = {"X-Hub-Signature-256": signature} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_get_endpoints(served):
    server = served.signed
    assert request(server.url + "/healthz") == (200, b"ok\n")
    assert request(server.url + "/metrics") == (200, b"virt_reconcile_x 1.0\n")
    code, body = request(server.url + "/status?pretty")
    assert code == 200 and json.loads(body)["reconciledRevision"] == "r1"
    assert request(server.url + "/nothing")[0] == 404


def test_healthz_fails_when_the_loop_is_not_alive(served):
    served.alive = False
    assert request(served.signed.url + "/healthz") == (503, b"stopped\n")


def test_a_signed_webhook_triggers_a_pass_and_a_badly_signed_one_does_not(served):
    server, hooks = served.signed, served.hooks
    body = b'{"ref": "refs/heads/main"}'
    assert request(server.url + "/hooks/git", body, sign(body)) == (202, b'{"accepted": true}\n')
    assert request(server.url + "/hooks/git", body, sign(body, b"other"))[0] == 401
    assert request(server.url + "/hooks/git", body, "")[0] == 401
    assert request(server.url + "/elsewhere", body, sign(body))[0] == 404
    assert hooks == ["webhook"]


def test_a_refused_webhook_is_logged_with_its_caller(served, caplog):
    body = b"{}"
    with caplog.at_level(logging.WARNING, logger="virt_reconcile.daemon.http"):
        assert request(served.signed.url + "/hooks/git", body, sign(body))[0] == 202
        assert request(served.signed.url + "/hooks/git", body, sign(body, b"other"))[0] == 401
    assert [r.getMessage() for r in caplog.records] == ["webhook refused: bad signature (from 127.0.0.1)"]


def test_the_webhook_is_off_without_a_secret(served):
    server, hooks = served.unsigned, served.hooks
    body = b"{}"
    assert request(server.url + "/hooks/git", body, sign(body))[0] == 404
    assert hooks == []
