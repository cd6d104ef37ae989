"""libvirt's own test-suite XML, defined on the sandbox as managed domains, plans to zero changes."""

from __future__ import annotations

import json
import uuid

import yaml
from lxml import etree

from reconciler.adapters.gitsource import root_identity
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.models import Owner
from tests.helpers import cli, shared_domain_files, write

OWNER = Owner(manifest="imported.yaml", revision="", spec_hash="")


def manifest_for(xml: str, name: str) -> str:
    spec = parse_domain(xml).spec.model_dump(mode="json", by_alias=True)
    spec["state"] = "stopped"
    return yaml.safe_dump(
        {"apiVersion": "virt-reconcile/v1", "kind": "Domain", "metadata": {"name": name}, "spec": spec},
        sort_keys=False,
    )


def test_corpus_domains_plan_to_zero_changes_then_a_memory_change_alters_only_memory(sandbox):
    files = shared_domain_files()
    documents = []
    names = []
    for index, path in enumerate(files):
        root = etree.fromstring(path.read_bytes())
        name = f"corpus-{index:02d}"
        root.find("name").text = name
        if root.find("uuid") is not None:
            root.find("uuid").text = str(uuid.uuid5(uuid.NAMESPACE_URL, name))  # the corpus reuses uuids
            for entry in root.iterfind("sysinfo/system/entry[@name='uuid']"):
                entry.text = root.find("uuid").text
        for source in root.iterfind("devices/disk/source"):  # the corpus shares images: one each
            for attribute in ("file", "dev"):
                if source.get(attribute):
                    source.set(attribute, f"{source.get(attribute)}-{name}")
        renamed = etree.tostring(root, encoding="unicode")
        owner = OWNER.model_copy(update={"root": root_identity(sandbox.root), "host": "hv1"})
        xml = merge_domain(renamed, parse_domain(renamed).spec, owner)
        sandbox.seed(xml, running=False)
        documents.append(manifest_for(xml, name))
        names.append(name)
    write(sandbox.root, "imported.yaml", "---\n".join(documents))

    result = cli("plan", str(sandbox.root), "--format", "json")
    assert result.code == 0, result.out
    assert len(names) >= 10

    before = {name: view.xml for name, view in sandbox.view().items()}
    target = names[0]
    changed = yaml.safe_load(documents[0])
    changed["spec"]["memory"] = "9GiB"
    bigger = [yaml.safe_dump(changed, sort_keys=False), *documents[1:]]
    write(sandbox.root, "imported.yaml", "---\n".join(bigger))
    planned = json.loads(cli("plan", str(sandbox.root), "--format", "json").out)
    assert [(a["action"], a["domain"]) for a in planned["actions"]] == [("update", target)]
    assert [c["field"] for c in planned["actions"][0]["changes"]] == ["memory"]
    assert cli("apply", str(sandbox.root)).code == 0
    after = {name: view.xml for name, view in sandbox.view().items()}
    assert {n for n in names if after[n] != before[n]} == {target}
    old, new = etree.fromstring(before[target].encode()), etree.fromstring(after[target].encode())
    assert new.findtext("memory") == str(9 * 1024 * 1024)
    for tree in (old, new):
        tree.remove(tree.find("memory"))
        tree.remove(tree.find("metadata"))  # ownership metadata records the new spec hash
    assert etree.tostring(old) == etree.tostring(new)
