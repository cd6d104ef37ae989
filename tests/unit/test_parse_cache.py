"""Domain XML parsed in an earlier run is read back from the cache, equal to parsing it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.errors import DomainXMLError
from reconciler.files.content_cache import ContentCache
from reconciler.libvirtxml import parse as domxml
from reconciler.libvirtxml.parse import cached_parses, forget_parsed, parse_domain
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import DomainSpec, Owner
from tests.helpers import shared_domain_files

OWNER = Owner(manifest="vms/a.yaml", revision="abc", spec_hash="0123456789abcdef")


def sample_xmls() -> list[str]:
    spec = DomainSpec.model_validate(
        {"memory": "2GiB", "vcpus": 2, "disks": [{"path": "/img/a.qcow2", "format": "qcow2"}]}
    )
    return [render_domain(f"vm{index}", spec, OWNER if index % 2 else None) for index in range(5)]


def fresh_parses(xmls: list[str]) -> list[domxml.ParsedDomain]:
    forget_parsed()
    return [parse_domain(xml, state="running", autostart=True) for xml in xmls]


def parse_round(folder: Path, xmls: list[str]) -> tuple[list[domxml.ParsedDomain], ContentCache]:
    """One run as a new process does it: empty memo, cache file read, every XML parsed."""
    forget_parsed()
    cache = ContentCache(folder, "domains")
    with cached_parses(cache, "hv1 test:///default", xmls):
        parsed = [parse_domain(xml, state="running", autostart=True) for xml in xmls]
    return parsed, cache


def no_parsing(xml: str) -> domxml.ParsedDomain:
    raise AssertionError("parsed although the cache holds it")


def test_a_second_run_reads_every_parse_from_the_cache(tmp_path, monkeypatch):
    xmls = sample_xmls()
    expected = fresh_parses(xmls)
    first, cache = parse_round(tmp_path, xmls)
    assert first == expected
    assert (cache.hits, cache.misses) == (0, 5)
    monkeypatch.setattr(domxml, "_parse", no_parsing)
    second, cache = parse_round(tmp_path, xmls)
    assert second == expected
    assert (cache.hits, cache.misses) == (5, 0)


def test_every_corpus_domain_reads_back_from_the_cache_unchanged(tmp_path, monkeypatch):
    xmls = []
    for path in shared_domain_files():
        xml = path.read_text()
        try:
            parse_domain(xml)
        except DomainXMLError:
            continue  # what the model cannot read is never cached
        xmls.append(xml)
    assert len(xmls) > 30
    expected = fresh_parses(xmls)
    parse_round(tmp_path, xmls)
    monkeypatch.setattr(domxml, "_parse", no_parsing)
    assert parse_round(tmp_path, xmls)[0] == expected


def test_a_changed_domain_is_parsed_again_and_a_gone_one_dropped(tmp_path):
    xmls = sample_xmls()
    parse_round(tmp_path, xmls)
    changed = [xmls[0].replace("<vcpu>2</vcpu>", "<vcpu>3</vcpu>"), *xmls[1:3]]
    assert changed[0] != xmls[0]
    parsed, cache = parse_round(tmp_path, changed)
    assert parsed[0].spec.vcpus == 3
    assert (cache.hits, cache.misses) == (2, 1)
    (stored,) = (tmp_path / "domains").glob("*.json")
    assert len(json.loads(stored.read_text())["entries"]) == 3


@pytest.mark.parametrize(
    "spoil",
    [
        lambda entry: [entry[0], entry[1], entry[2].replace('"vcpus":2', '"vcpus":"many"'), entry[3]],
        lambda entry: [42, entry[1], entry[2], entry[3]],
        lambda entry: entry[:2],
    ],
    ids=["invalid-spec", "name-not-a-string", "short"],
)
def test_an_entry_this_code_would_not_write_is_parsed_again(tmp_path, spoil):
    xmls = sample_xmls()
    expected = fresh_parses(xmls)
    parse_round(tmp_path, xmls)
    (stored,) = (tmp_path / "domains").glob("*.json")
    content = json.loads(stored.read_text())
    content["entries"] = {digest: spoil(entry) for digest, entry in content["entries"].items()}
    stored.write_text(json.dumps(content))
    parsed, cache = parse_round(tmp_path, xmls)
    assert parsed == expected
    assert (cache.hits, cache.misses) == (0, 5)
    assert parse_round(tmp_path, xmls)[1].hits == 5  # and the cache is whole again


def test_without_a_cache_nothing_is_kept(tmp_path):
    xmls = sample_xmls()
    forget_parsed()
    with cached_parses(None, "hv1", xmls):
        assert [parse_domain(xml).name for xml in xmls] == [f"vm{index}" for index in range(5)]
    assert not list(tmp_path.iterdir())
