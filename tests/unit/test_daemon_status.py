"""The daemon's status store: consistent copies for readers, saved whole, loaded at start."""

from __future__ import annotations

import json
import threading

from reconciler.daemon.status import HostStatus, StatusStore


def test_a_document_is_a_copy_the_loop_cannot_change_under_a_reader(tmp_path):
    store = StatusStore(tmp_path / "status.json")
    store.set_host("hv1", HostStatus("r1", "applied", "r1", "no changes", "t"))
    document = store.document()
    store.source_failed("r1", "fetch failed")
    assert document["hosts"]["hv1"]["result"] == "applied"
    assert store.document()["hosts"]["hv1"] == {
        "revision": "r1",
        "result": "error",
        "appliedRevision": "r1",
        "message": "fetch failed",
        "time": store.document()["source"]["time"],
        "domains": {},
        "policy": [],
        "pendingRestarts": [],
        "suspended": False,
        "deferred": "",
    }


def test_the_document_keeps_its_shape(tmp_path):
    store = StatusStore(tmp_path / "status.json")
    store.source_fetched("abc")
    store.reconciled("abc")
    document = store.document()
    assert set(document) == {
        "hosts",
        "source",
        "reconciledRevision",
        "revisionError",
        "inProgress",
        "history",
    }
    assert set(document["source"]) == {"revision", "message", "time"}
    assert document["reconciledRevision"] == "abc" and not store.source_failing


def test_saved_whole_and_loaded_at_start(tmp_path):
    path = tmp_path / "state" / "status.json"
    store = StatusStore(path)
    store.set_host("hv1", HostStatus("r2", "refused", "r1", "cpu.total over", "t"))
    store.save()
    assert json.loads(path.read_text())["hosts"]["hv1"]["appliedRevision"] == "r1"
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temporary file left
    assert StatusStore.load(path).host("hv1") == HostStatus("r2", "refused", "r1", "cpu.total over", "t")


def test_an_unreadable_status_file_starts_empty(tmp_path):
    for text in ("{not json", '{"hosts": {"hv1": {"nonsense": 1}}}', '["a list"]'):
        (tmp_path / "status.json").write_text(text)
        assert StatusStore.load(tmp_path / "status.json").document()["hosts"] == {}


def test_invalid_manifests_put_every_known_and_configured_host_in_error(tmp_path):
    store = StatusStore(tmp_path / "status.json")
    store.set_host("hv1", HostStatus("r1", "applied", "r1", "", "t"))
    store.every_host_failed(["hv2"], "r2", "manifests invalid")
    hosts = store.document()["hosts"]
    assert {name: (h["result"], h["appliedRevision"]) for name, h in hosts.items()} == {
        "hv1": ("error", "r1"),
        "hv2": ("error", ""),
    }


def test_concurrent_writers_and_readers(tmp_path):
    store = StatusStore(tmp_path / "status.json")
    names = [f"hv{i}" for i in range(20)]
    for name in names:
        store.set_host(name, HostStatus(message="0"))
    torn: list[set[str]] = []

    def write() -> None:
        for i in range(200):
            store.source_failed("r", str(i))

    def read() -> None:
        for _ in range(200):
            messages = {h["message"] for h in store.document()["hosts"].values()}
            if len(messages) != 1:
                torn.append(messages)

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torn == []
