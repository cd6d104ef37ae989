"""libvirt's own test-suite XML, defined on the real daemon as managed domains, plans to zero changes."""

from __future__ import annotations

import uuid

import libvirt
import yaml
from lxml import etree

from reconciler.adapters.gitsource import root_identity
from reconciler.engine.diff import normalise, spec_changes
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.models import Owner
from tests.helpers import shared_domain_files, write

OWNER = Owner(manifest="imported.yaml")


def test_corpus_defined_on_libvirtd_plans_to_zero_changes(e2e, conn):
    files = [path for path in shared_domain_files() if b"arch='x86_64'" in path.read_bytes()]
    documents = [
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "local"},
            "spec": {"uri": "qemu:///system"},
        }
    ]
    defined = []
    for index, path in enumerate(files):
        root = etree.fromstring(path.read_bytes())
        name = e2e.name(f"corpus-{index:02d}")
        root.find("name").text = name
        fresh = str(uuid.uuid4())
        if root.find("uuid") is not None:
            root.find("uuid").text = fresh
        for entry in root.iterfind("sysinfo/system/entry[@name='uuid']"):
            entry.text = fresh
        for source in root.iterfind("devices/disk/source"):  # the corpus shares images: one each
            for attribute in ("file", "dev"):
                if source.get(attribute):
                    source.set(attribute, f"{source.get(attribute)}-{name}")
        xml = etree.tostring(root, encoding="unicode")
        spec = parse_domain(xml).spec
        try:
            owner = OWNER.model_copy(update={"root": root_identity(e2e.root), "host": "local"})
            dom = conn.defineXML(merge_domain(xml, spec, owner))
        except libvirt.libvirtError as err:
            raise AssertionError(f"{path.name} was not accepted by libvirtd: {err}") from err
        defined.append(path.name)
        # What libvirt filled in (machine versions, MACs, controllers, addresses, driver types) is
        # no difference; <memory> recomputed from NUMA cells is a real one, which an import records.
        held = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).spec
        differences = {c.field for c in spec_changes(held, normalise(spec, held))}
        if root.find("cpu/numa/cell") is not None and differences == {"memory"}:
            spec = spec.model_copy(update={"memory": held.memory, "current_memory": held.current_memory})
        else:
            assert differences == set(), f"{path.name}: {differences}"
        manifest = spec.model_dump(mode="json", by_alias=True)
        manifest["state"] = "stopped"
        documents.append(
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Domain",
                "metadata": {"name": name},
                "spec": manifest,
            }
        )
    assert len(defined) >= 10, defined
    write(e2e.root, "imported.yaml", yaml.safe_dump_all(documents, sort_keys=False))
    planned = e2e.cli("plan")
    assert planned.code == 0, planned.out
