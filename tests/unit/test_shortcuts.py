"""Shortcuts taken for speed on thousands of domains give exactly what the long way gives."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.engine.actions import Action, ActionKind, Phase
from reconciler.engine.policy import SUMMED, contribution, contributions, evaluate, host_facts
from reconciler.engine.usage import Usage
from reconciler.libvirtxml import parse as domxml
from reconciler.libvirtxml.parse import parse_ahead, parse_domain
from reconciler.libvirtxml.render import render_domain
from reconciler.libvirtxml.secrets import defined_name, leading_name
from reconciler.libvirtxml.xmltext import escaped, quoted
from reconciler.spec.models import Capacity, DomainSpec, Overcommit, Owner
from tests.helpers import shared_domain_files

OWNER = Owner(manifest="vms/a.yaml", revision="abc", spec_hash="0123456789abcdef")
TRICKY = st.text(alphabet=st.sampled_from(list("ab &<>\"'\n\r\t\u00e9]")), max_size=12)


@given(TRICKY)
def test_escaping_is_what_saxutils_writes(value: str):
    assert quoted(value) == quoteattr(value)
    assert escaped(value) == escape(value)


@pytest.mark.parametrize(
    "xml",
    [
        "<domain type='kvm'>\n  <name>web-01</name>\n  <memory>1024</memory>\n</domain>",
        "<domain type=\"kvm\" xmlns:qemu='urn:qemu'><name>a b</name></domain>",
        "<?xml version='1.0'?>\n<domain><name>declared</name></domain>",
        "<domain><uuid>x</uuid><name>second</name></domain>",
        "<domain><name>a&amp;b</name></domain>",
        "<domain><name>x&#13;y</name></domain>",
        "<domain><name></name></domain>",
        "<domain xmlns='urn:other'><name>namespaced</name></domain>",
        "<domain><!-- first --><name>after-a-comment</name></domain>",
        "<network><name>n</name></network>",
        "<domain><name>",
    ],
)
def test_the_leading_name_is_the_defined_name(xml: str):
    assert leading_name(xml) == defined_name(xml)


def test_the_leading_name_of_rendered_and_real_world_xml():
    spec = DomainSpec.model_validate({"memory": "1GiB"})
    assert leading_name(render_domain("web <&> 'x'", spec, OWNER)) == "web <&> 'x'"
    for path in shared_domain_files():
        xml = path.read_text()
        assert leading_name(xml) == defined_name(xml), path.name


def test_summed_contributions_are_each_rules_contribution():
    policies = [Overcommit(), Overcommit.model_validate({"cpu": {"countInactive": False}})]
    claims = [None, Usage(2, 4 << 30, 1 << 30, True), Usage(3, 2 << 30, 2 << 30, False)]
    for policy in policies:
        for claim in claims:
            assert contributions(claim, policy) == tuple(contribution(r, claim, policy) for r in SUMMED)
    with pytest.raises(ValueError, match="not a summed rule"):
        contribution("cpu.perDomain", claims[1], policies[0])


def test_a_rule_that_holds_names_no_contributors():
    def define(name: str, vcpus: int, memory: str) -> Action:
        spec = DomainSpec.model_validate({"memory": memory, "vcpus": vcpus})
        return Action(ActionKind.DEFINE, "hv", name, Phase.DEFINE, spec=spec)

    wide = evaluate(
        Overcommit(),
        host_facts(Capacity(), cpus=1, memory=64 << 30, swap=0, ksm_saved=0),
        {},
        [define("web", 2, "1GiB")],
    )
    assert {rule.rule: rule.contributors for rule in wide.rules if rule.raised} == {
        "cpu.perDomain": (("web", 2),)
    }
    assert all(rule.contributors == () for rule in wide.rules if not rule.raised)
    big = evaluate(
        Overcommit(),
        host_facts(Capacity(), cpus=8, memory=2 << 30, swap=0, ksm_saved=0),
        {},
        [define("db", 1, "1536MiB"), define("web", 1, "1GiB")],
    )
    assert {rule.rule: rule.contributors for rule in big.rules if rule.raised} == {
        "memory.commit": (("db", 1536 << 20), ("web", 1 << 30))
    }


def parse_samples(count: int) -> list[str]:
    spec = DomainSpec.model_validate({"memory": "1GiB", "vcpus": 2})
    return [render_domain(f"vm{index}", spec, OWNER) for index in range(count)]


def test_parsing_ahead_fills_the_memo_and_skips_what_cannot_be_read(monkeypatch):
    xmls = parse_samples(2)
    domxml.forget_parsed()
    parse_ahead([*xmls, "<domain", "<domain type='xen'><name>x</name><memory>1</memory></domain>"])
    assert set(domxml._PARSED) == set(xmls)
    expected = domxml._PARSED[xmls[0]]

    def no_parsing(xml: str) -> domxml.ParsedDomain:
        raise AssertionError("parsed again although parsed ahead")

    monkeypatch.setattr(domxml, "_parse", no_parsing)
    assert parse_domain(xmls[0]) is expected
    assert parse_domain(xmls[1], state="running").spec.state == "running"


def test_parsing_ahead_takes_at_most_half_the_memo(monkeypatch):
    monkeypatch.setattr(domxml, "_PARSED_LIMIT", 4)
    domxml.forget_parsed()
    parse_ahead(parse_samples(4))
    assert len(domxml._PARSED) == 2
