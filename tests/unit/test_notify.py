"""Notifications: ``--notify`` values, what is sent and when, and delivery to a real local receiver
(retries, a hung or absent receiver, a full queue, no redirect, no secret in a log line)."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from reconciler.cli.main import main
from reconciler.daemon.decision import Reason
from reconciler.daemon.notices import (
    DESCRIPTION_CHARS,
    Event,
    Notice,
    NoticeFilter,
    Notifications,
    NotifyValueError,
    ReceiverKind,
    event_document,
    github_status,
    named_apart,
    parse_receiver,
    request_for,
    slack_document,
)
from reconciler.daemon.notify import Notifier
from reconciler.daemon.verdict import HostVerdict
from tests.notify_helpers import absent_url

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "ghp_not_a_real_token_1234"
FAST = {"timeout": 5.0, "attempts": 3, "backoff": 0.01}


def notice(
    event: Event = Event.APPLIED, host: str = "hv1", message: str = "1 action(s): define web"
) -> Notice:
    return Notice(event, host, SHA, message, "2030-01-01T00:00:00+00:00", "new revision", ("define web",))


def eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until ``check()`` holds (it is about threads finishing, not about how fast they do)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.01)


@pytest.fixture
def notifiers() -> Iterator[Callable[..., Notifier]]:
    started: list[Notifier] = []

    def start(*urls: str, **settings: object) -> Notifier:
        receivers = named_apart([parse_receiver(url) for url in urls])
        started.append(Notifier(Notifications(receivers, **{**FAST, **settings}), CollectorRegistry()))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for notifier in started:
        notifier.close(timeout=1)


def count(notifier: Notifier, result: str, index: int = 0) -> float:
    name = notifier.senders[index].receiver.name
    value = notifier.counter.labels(name, result)._value.get()
    return float(value)


def applied(message: str = "1 action(s): define web") -> HostVerdict:
    return HostVerdict("applied", message)


# ------------------------------------------------------------------------------ --notify values


@pytest.mark.parametrize(
    ("value", "kind", "name"),
    [
        ("https://ci.example.com/hooks/s3cret", ReceiverKind.WEBHOOK, "webhook:https://ci.example.com"),
        (
            "https://u:pw@ci.example.com:8443/in?key=s3cret",
            ReceiverKind.WEBHOOK,
            "webhook:https://ci.example.com:8443",
        ),
        ("http://[::1]:9000/s3cret", ReceiverKind.WEBHOOK, "webhook:http://[::1]:9000"),
        # Discord, Teams and n8n put the secret in the path of a generic JSON webhook
        ("https://discord.com/api/webhooks/1/s3cret", ReceiverKind.WEBHOOK, "webhook:https://discord.com"),
        ("https://n8n.example.com/webhook/s3cret", ReceiverKind.WEBHOOK, "webhook:https://n8n.example.com"),
        (
            "https://hooks.slack.com/services/T0/B0/s3cret",
            ReceiverKind.SLACK,
            "slack:https://hooks.slack.com",
        ),
        ("slack+https://chat.example.com/hooks/s3cret", ReceiverKind.SLACK, "slack:https://chat.example.com"),
    ],
)
def test_a_receiver_is_named_without_its_secrets(value, kind, name):
    receiver = parse_receiver(value)
    assert (receiver.kind, receiver.name) == (kind, name)
    assert "s3cret" not in repr(receiver) and "pw" not in receiver.name


def test_a_github_receiver_reads_its_token_file_and_names_only_the_repository(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    receiver = parse_receiver(
        f"github:acme/infra.repo?token-file={token}&api=https://ghe.example.com/api/v3/"
    )
    assert receiver.kind is ReceiverKind.GITHUB and receiver.name == "github:acme/infra.repo"
    assert receiver.url == "https://ghe.example.com/api/v3" and receiver.token_file == token
    assert TOKEN not in repr(receiver)
    assert parse_receiver(f"github:acme/infra?token-file={token}").url == "https://api.github.com"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://example.com/x", "not a notification URL"),
        ("example.com/hook", "not a notification URL"),
        ("https://", "not a notification URL"),
        ("https://example.com:99999/x", "port"),
        ("https://example.com/a b", "no spaces"),
        ("github:acme", "not a GitHub OWNER/REPO"),
        ("github:-acme/infra?token-file=/dev/null", "not a GitHub OWNER/REPO"),
        ("github:acme/infra", "needs ?token-file=FILE"),
        ("github:acme/infra?token-file=/nonexistent/token", "No such file"),
        ("github:acme/infra?token-file=/dev/null", "does not hold one token"),
        ("github:acme/infra?token=abc", "unknown parameter 'token'"),
    ],
)
def test_a_bad_value_is_refused_with_its_reason(value, message):
    with pytest.raises(NotifyValueError, match=message.replace("?", r"\?")):
        parse_receiver(value)


def test_a_bad_notify_value_is_a_usage_error_that_shows_no_secret_path(capsys):
    with pytest.raises(SystemExit) as usage:
        main(["daemon", "--source", "/tmp", "--notify", "https://hooks.slack.com:x/services/s3cret"])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert "argument --notify: 'https://hooks.slack.com/…'" in err and "port" in err
    assert "s3cret" not in err


def test_a_notify_value_may_come_from_a_file_or_a_variable_kept_out_of_the_command_line(
    tmp_path, monkeypatch
):
    from reconciler.cli.argtypes import notify_target

    url_file = tmp_path / "slack-url"
    url_file.write_text("https://hooks.slack.com/services/T0/B0/s3cret\n")
    slack = notify_target(f"@{url_file}")
    assert (slack.kind, slack.name, slack.url) == (
        ReceiverKind.SLACK,
        "slack:https://hooks.slack.com",
        "https://hooks.slack.com/services/T0/B0/s3cret",
    )
    monkeypatch.setenv("VR_TEST_NOTIFY", "https://discord.com/api/webhooks/1/s3cret")
    assert notify_target("env:VR_TEST_NOTIFY").name == "webhook:https://discord.com"


@pytest.mark.parametrize(
    ("content", "value", "message"),
    [
        (None, "@{dir}/absent", "'@{dir}/absent': {dir}/absent: No such file or directory"),
        ("", "@{file}", "'@{file}': {file} does not hold one notification URL (one line)"),
        (
            "https://a.example/s3cret\nhttps://b.example/s3cret",
            "@{file}",
            "'@{file}': {file} does not hold one notification URL (one line)",
        ),
        (
            "https://hooks.slack.com:x/s3cret",
            "@{file}",
            "'@{file}': 'https://hooks.slack.com/…': the URL's port",
        ),
        (
            None,
            "env:VR_TEST_UNSET",
            "'env:VR_TEST_UNSET': the environment variable 'VR_TEST_UNSET' is not set",
        ),
    ],
)
def test_a_notify_value_that_cannot_be_read_is_a_usage_error_naming_where_never_what(
    tmp_path, capsys, monkeypatch, content, value, message
):
    monkeypatch.delenv("VR_TEST_UNSET", raising=False)
    url_file = tmp_path / "url"
    if content is not None:
        url_file.write_text(content)
    value, message = (text.format(dir=tmp_path, file=url_file) for text in (value, message))
    with pytest.raises(SystemExit) as usage:
        main(["daemon", "--source", "/tmp", "--notify", value])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --notify: {message}" in " ".join(err.split()), err
    assert "s3cret" not in err


def test_a_commit_status_needs_a_git_source(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    code = main(["daemon", "--source", str(tmp_path), "--notify", f"github:acme/infra?token-file={token}"])
    assert code == 1
    assert (
        "--notify github:acme/infra sets commit statuses, which needs a git --source"
        in capsys.readouterr().err
    )


def test_receivers_whose_shown_names_match_are_numbered_apart():
    named = named_apart([parse_receiver(f"https://hooks.slack.com/services/{n}") for n in "abc"])
    assert [r.name for r in named] == [
        "slack:https://hooks.slack.com",
        "slack:https://hooks.slack.com#2",
        "slack:https://hooks.slack.com#3",
    ]


# ------------------------------------------------------------------------------ what is sent


def test_the_json_event_carries_what_happened():
    assert event_document(notice()) == {
        "event": "applied",
        "host": "hv1",
        "revision": SHA,
        "message": "1 action(s): define web",
        "actions": ["define web"],
        "reason": "new revision",
        "time": "2030-01-01T00:00:00+00:00",
    }
    assert event_document(notice(Event.ERROR, host=""))["host"] is None  # a revision no host could use


def test_a_slack_message_escapes_what_slack_would_read_as_a_link_or_mention():
    document = slack_document(notice(Event.ERROR, message="bad <!channel> & <https://x|y>"))
    text = document["text"]
    assert text.startswith(":x: hv1: error at 0123456789ab (new revision): ")
    assert "<" not in text and ">" not in text and "&lt;!channel&gt; &amp; &lt;https://x|y&gt;" in text
    assert document["blocks"][0]["text"]["text"] == text


@pytest.mark.parametrize(
    ("event", "state"),
    [
        (Event.APPLIED, "success"),
        (Event.DRIFT, "success"),
        (Event.UNCHANGED, "success"),
        (Event.REFUSED, "failure"),
        (Event.ERROR, "error"),
        (Event.DEFERRED, "pending"),
        (Event.SUSPENDED, "pending"),
    ],
)
def test_a_commit_status_maps_each_event_to_a_state_and_fits_githubs_limits(event, state):
    status = github_status(notice(event, message="x" * 500))
    assert status["state"] == state and status["context"] == "virt-reconcile/hv1"
    assert len(status["description"]) == DESCRIPTION_CHARS and status["description"].endswith("…")
    assert github_status(notice(event, host=""))["context"] == "virt-reconcile"


def test_a_commit_status_needs_a_commit_and_reads_the_token_at_each_request(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    receiver = parse_receiver(f"github:acme/infra?token-file={token}&api=http://127.0.0.1:1/api")
    request = request_for(receiver, notice())
    assert request is not None
    assert request.url == f"http://127.0.0.1:1/api/repos/acme/infra/statuses/{SHA}"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    token.write_text("rotated")
    assert request_for(receiver, notice()).headers["Authorization"] == "Bearer rotated"  # type: ignore[union-attr]
    directory = Notice(Event.APPLIED, "hv1", "dir:0123456789ab", "m", "t")
    assert request_for(receiver, directory) is None


def test_user_info_in_a_webhook_url_becomes_basic_authentication():
    request = request_for(parse_receiver("https://bot:p%40ss@ci.example.com/in"), notice())
    assert request is not None and request.url == "https://ci.example.com/in"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"bot:p@ss").decode()


# ------------------------------------------------------------------------------ which verdicts


def test_unchanged_passes_are_not_sent_and_a_repeated_error_is_sent_once():
    chosen = NoticeFilter()
    assert chosen.verdict("hv1", "r1", "applied", False, "define web") is Event.APPLIED
    assert chosen.verdict("hv1", "r1", "unchanged", False, "no changes") is None
    assert chosen.verdict("hv1", "r1", "error", False, "connection reset") is Event.ERROR
    assert chosen.verdict("hv1", "r1", "error", False, "connection reset") is None  # the retry
    assert chosen.verdict("hv2", "r1", "error", False, "connection reset") is Event.ERROR  # another host
    assert chosen.verdict("hv1", "r1", "error", False, "timed out") is Event.ERROR  # another error
    assert chosen.verdict("hv1", "r1", "unchanged", False, "no changes") is Event.APPLIED  # it cleared
    assert chosen.verdict("hv1", "r1", "unchanged", False, "no changes") is None
    assert chosen.verdict("hv1", "r1", "error", False, "timed out") is Event.ERROR  # again, after a recovery
    assert chosen.verdict("hv1", "r1", "pending", False, "?") is None  # a result it does not know


def test_a_refusal_met_again_by_a_resync_is_not_sent_again_and_drift_always_is():
    chosen = NoticeFilter()
    assert chosen.verdict("hv1", "r2", "refused", False, "cpu.total") is Event.REFUSED
    assert chosen.verdict("hv1", "r2", "refused", False, "cpu.total") is None
    assert chosen.verdict("hv1", "r3", "refused", False, "cpu.total") is Event.REFUSED  # a new revision
    assert chosen.verdict("hv1", "r3", "applied", True, "drift corrected") is Event.DRIFT
    assert chosen.verdict("hv1", "r3", "applied", True, "drift corrected") is Event.DRIFT


def test_a_deferral_is_sent_once_per_revision_and_its_end_is_sent_as_applied():
    chosen = NoticeFilter()
    assert chosen.verdict("hv1", "r1", "applied", False, "define web") is Event.APPLIED
    assert chosen.verdict("hv1", "r2", "deferred", False, "2 action(s) wait: closes 01:00Z") is Event.DEFERRED
    assert (
        chosen.verdict("hv1", "r2", "deferred", False, "2 action(s) wait: closes 01:01Z") is None
    )  # rolling
    assert chosen.verdict("hv1", "r3", "deferred", False, "2 action(s) wait: closes 01:01Z") is Event.DEFERRED
    assert chosen.verdict("hv1", "r3", "applied", False, "define db") is Event.APPLIED  # the window opened
    assert chosen.verdict("hv1", "r3", "suspended", False, "the host is suspended") is Event.SUSPENDED
    assert chosen.verdict("hv1", "r3", "suspended", False, "the host is suspended") is None
    assert chosen.verdict("hv1", "r3", "unchanged", False, "no changes") is Event.APPLIED  # unsuspended


def test_every_new_revision_gets_a_commit_status_even_when_it_changes_nothing(receivers, notifiers, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    github, webhook = receivers(status=201), receivers()
    notifier = notifiers(f"github:acme/infra?token-file={token}&api={github.url}", webhook.url)
    other = "f" * 40
    notifier.host_verdict("hv1", SHA, applied(), Reason.REVISION)
    notifier.host_verdict("hv1", other, HostVerdict("unchanged", "no changes"), Reason.REVISION)
    notifier.host_verdict("hv1", other, HostVerdict("unchanged", "no changes"), Reason.RESYNC)  # not again
    notifier.host_verdict("hv2", other, HostVerdict("unchanged", "no changes"), Reason.REVISION)
    statuses = github.wait_for(3)
    assert [(r.path.rsplit("/", 1)[1], r.json["state"], r.json["context"]) for r in statuses] == [
        (SHA, "success", "virt-reconcile/hv1"),
        (other, "success", "virt-reconcile/hv1"),
        (other, "success", "virt-reconcile/hv2"),
    ]
    assert statuses[1].json["description"] == "unchanged: no changes"
    eventually(lambda: count(notifier, "sent", 0) == 3 and count(notifier, "sent", 1) == 1)
    assert webhook.events() == ["applied"]  # the other receivers hear of changes only


def test_a_revision_no_host_could_use_is_sent_once_and_cleared_by_each_hosts_next_good_pass():
    chosen = NoticeFilter()
    assert chosen.verdict("hv1", "r1", "unchanged", False, "no changes") is None
    assert chosen.revision_failed((), "r2", "manifests invalid") is True
    assert chosen.revision_failed((), "r2", "manifests invalid") is False  # the resync loads it again
    # the revert commit changes nothing, yet every host's alert must clear
    assert chosen.verdict("hv1", "r3", "unchanged", False, "no changes") is Event.APPLIED
    assert chosen.verdict("hv2", "r3", "unchanged", False, "no changes") is Event.APPLIED
    assert chosen.verdict("hv1", "r3", "unchanged", False, "no changes") is None


# ------------------------------------------------------------------------------ delivery


def test_a_receiver_failing_at_first_gets_the_notice_on_a_later_attempt(receivers, notifiers):
    receiver = receivers(fail_first=2)
    notifier = notifiers(receiver.url + "/hook")
    notifier.host_verdict("hv1", SHA, applied(), Reason.REVISION)
    requests = receiver.wait_for(3)
    assert [r.json for r in requests] == [requests[0].json] * 3  # the same notice, tried three times
    assert requests[0].path == "/hook" and requests[0].headers["Content-Type"] == "application/json"
    eventually(lambda: count(notifier, "sent") == 1)
    assert count(notifier, "failed") == 0


def test_a_refusal_is_not_retried_and_a_failing_receiver_is_logged_once_then_on_recovery(
    receivers, notifiers, caplog, tmp_path
):
    caplog.set_level(logging.INFO, logger="virt_reconcile.daemon.notify")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    receiver = receivers(status=401)
    notifier = notifiers(f"github:acme/infra?token-file={token}&api={receiver.url}/api/v3")
    for number in range(3):
        notifier.host_verdict("hv1", SHA, HostVerdict("error", f"failure {number}"), Reason.RETRY)
    eventually(lambda: count(notifier, "failed") == 3)
    assert len(receiver.requests) == 3  # one attempt each: a 401 would be refused again
    assert receiver.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    failures = [r.getMessage() for r in caplog.records if "failed after" in r.getMessage()]
    assert failures == [
        "notification to github:acme/infra failed after 1 attempt(s): HTTP 401 Unauthorized: "
        '{"message": "Bad credentials"}; until it delivers again, its failures are counted '
        "(virt_reconcile_notifications_total), not logged"
    ]
    receiver.status = 201
    notifier.host_verdict("hv1", SHA, applied(), Reason.RETRY)
    eventually(lambda: count(notifier, "sent") == 1)
    assert "notifications to github:acme/infra: delivered again (3 failed meanwhile)" in caplog.text
    assert TOKEN not in caplog.text


def test_an_absent_receiver_fails_after_its_attempts_and_its_secret_path_is_never_logged(notifiers, caplog):
    caplog.set_level(logging.INFO, logger="virt_reconcile.daemon.notify")
    url = absent_url()
    notifier = notifiers(f"slack+{url}/services/s3cret")
    notifier.host_verdict("hv1", SHA, applied(), Reason.REVISION)
    eventually(lambda: count(notifier, "failed") == 1)
    assert f"notification to slack:{url} failed after 3 attempt(s): ConnectionRefusedError" in caplog.text
    assert "s3cret" not in caplog.text


def test_a_redirect_is_not_followed(receivers, notifiers):
    elsewhere = receivers()
    receiver = receivers(status=302, location=elsewhere.url + "/stolen")
    notifier = notifiers(receiver.url)
    notifier.host_verdict("hv1", SHA, applied(), Reason.REVISION)
    eventually(lambda: count(notifier, "failed") == 1)
    assert len(receiver.requests) == 1 and elsewhere.requests == []


def test_a_hung_receiver_never_holds_up_the_caller_and_a_full_queue_drops_the_oldest(receivers, notifiers):
    hung = receivers(hang=True)
    notifier = notifiers(hung.url, timeout=60, attempts=1, capacity=2)
    notifier.host_verdict("hv1", SHA, applied("first"), Reason.REVISION)
    hung.wait_for(1)  # the sender is now stuck on the first notice
    for number in range(2, 6):  # these return at once: the caller never waits on the receiver
        notifier.host_verdict("hv1", SHA, applied(f"notice {number}"), Reason.REVISION)
    assert count(notifier, "dropped") == 2 and len(hung.requests) == 1
    hung.release()
    requests = hung.wait_for(3)
    assert [r.json["message"] for r in requests] == ["first", "notice 4", "notice 5"]
    eventually(lambda: count(notifier, "sent") == 3)


def test_a_hung_receiver_holds_up_no_other_receiver(receivers, notifiers):
    hung, healthy = receivers(hang=True), receivers()
    notifier = notifiers(hung.url, healthy.url, timeout=60, attempts=1)
    for number in range(3):
        notifier.host_verdict("hv1", SHA, applied(f"notice {number}"), Reason.REVISION)
    assert [r.json["message"] for r in healthy.wait_for(3)] == ["notice 0", "notice 1", "notice 2"]
    assert len(hung.wait_for(1)) == 1  # the first notice, still waiting for its answer


def test_close_waits_a_bounded_time_and_leaves_a_hung_sender_behind(receivers):
    hung = receivers(hang=True)
    settings = Notifications((parse_receiver(hung.url),), timeout=60, attempts=1)
    notifier = Notifier(settings, CollectorRegistry())
    notifier.host_verdict("hv1", SHA, applied(), Reason.REVISION)
    hung.wait_for(1)
    notifier.close(timeout=0.1)
    assert notifier.senders[0].thread.is_alive()  # still waiting on the receiver: left behind
    hung.release()
    notifier.senders[0].thread.join(30)
    assert not notifier.senders[0].thread.is_alive()


def test_without_receivers_nothing_is_filtered_queued_or_started():
    notifier = Notifier(Notifications(), CollectorRegistry())
    notifier.host_verdict("hv1", SHA, HostVerdict("error", "x"), Reason.REVISION)
    notifier.revision_failed(SHA, "manifests invalid")
    assert notifier.senders == []
    notifier.close(timeout=1)
