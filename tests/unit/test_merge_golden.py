"""Merges of a spec into existing domain XML, compared with golden files a reviewer can diff.

Each case in tests/golden/merge is three files:

* ``NAME.in.xml``: an existing libvirt definition (attributes in double quotes, as lxml writes
  them, so ``diff NAME.in.xml NAME.out.xml`` shows only what the merge changed);
* ``NAME.spec.yaml``: the Domain manifest applied (its first comment says what the case shows);
* ``NAME.out.xml``: the merged definition, or ``NAME.refused.txt`` when the merge refuses.

The spec is normalised against the parsed XML first, as a plan does (machine version and MACs
libvirt filled in are kept). The owner written is the one the inputs already carry, so only the
ownership cases show metadata changes. ``UPDATE_GOLDEN=1 pytest tests/unit/test_merge_golden.py``
rewrites the outputs (as for the markdown goldens): review each diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from reconciler.engine.diff import normalise, spec_changes
from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.models import DomainSpec, Owner

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "merge"
CASES = sorted(path.name.removesuffix(".in.xml") for path in GOLDEN.glob("*.in.xml"))
MERGED = [name for name in CASES if not (GOLDEN / f"{name}.refused.txt").exists()]


def owner(name: str) -> Owner:
    return Owner(manifest=f"vms/{name}.yaml", revision="c0ffee1", spec_hash="0123456789abcdef")


def desired_spec(name: str, xml: str) -> DomainSpec:
    document = yaml.safe_load((GOLDEN / f"{name}.spec.yaml").read_text())
    spec = DomainSpec.model_validate(document.get("spec", document))  # a Domain manifest or its spec
    return normalise(spec, parse_domain(xml).spec)


def merge_case(name: str) -> tuple[str, str]:
    """The golden file's name and the text it should hold."""
    xml = (GOLDEN / f"{name}.in.xml").read_text()
    try:
        merged = merge_domain(xml, desired_spec(name, xml), owner(name))
    except DomainXMLError as err:
        return f"{name}.refused.txt", f"{err}\n"
    return f"{name}.out.xml", merged + "\n"


def test_there_are_cases():
    assert len(CASES) >= 15


@pytest.mark.parametrize("name", CASES)
def test_merge_matches_golden(name):
    filename, text = merge_case(name)
    golden = GOLDEN / filename
    if os.environ.get("UPDATE_GOLDEN"):
        for stale in (GOLDEN / f"{name}.out.xml", GOLDEN / f"{name}.refused.txt"):
            stale.unlink(missing_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"{golden.name} differs: review, then UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize("name", MERGED)
def test_merged_xml_reads_back_as_the_spec_and_merges_to_itself(name):
    filename, merged = merge_case(name)
    assert filename.endswith(".out.xml"), f"{name} is refused now: regenerate its golden files"
    desired = desired_spec(name, (GOLDEN / f"{name}.in.xml").read_text())
    parsed = parse_domain(merged, state=desired.state, autostart=desired.autostart)
    assert spec_changes(parsed.spec, desired) == ()
    assert parsed.owner == owner(name)
    assert merge_domain(merged, desired, owner(name)) + "\n" == merged  # nothing left to change


def test_a_merge_with_nothing_to_change_returns_the_input():
    xml = (GOLDEN / "noop.in.xml").read_text()
    assert merge_case("noop") == ("noop.out.xml", xml)


def test_every_golden_file_belongs_to_a_case():
    names = {path.name.split(".", 1)[0] for path in GOLDEN.iterdir()}
    assert names == set(CASES)
    for name in CASES:
        assert (GOLDEN / f"{name}.spec.yaml").exists()
