"""``apply --plan FILE`` trusts nothing in the file: it must be signed by this machine's plan key,
and every action is re-derived against the re-observed host, signed or not.

Each attack is tried twice where it matters: as a plain edit (refused by the signature) and signed
again with the right key, as if the key had leaked (refused by the re-check, which does not rely
on the signature). Nothing is ever applied on a refusal.
"""

from __future__ import annotations

import json
import secrets
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from reconciler.engine.reconcile import ReconcileOptions, reconcile
from reconciler.files.atomic import write_atomically
from reconciler.files.keys import KEY_FILE_ENV, KEY_FILE_NAME, STATE_DIR_ENV, SigningKey, signing_key
from reconciler.libvirtxml.parse import parse_domain
from reconciler.libvirtxml.render import render_domain
from reconciler.offline.savedplan import signature
from reconciler.spec.manifests import load_manifests
from reconciler.spec.models import DomainSpec
from tests.helpers import cli, domain_yaml, host_yaml, write
from tests.sandbox.test_properties import connect, desired_sets

SHADOW_DISK = {"path": "/etc/shadow", "format": "raw", "bus": "virtio", "target": "vdz"}
QEMU_COMMANDLINE = (
    "  <qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
    "<qemu:arg value='-monitor'/><qemu:arg value='tcp:0.0.0.0:4444,server'/></qemu:commandline>\n"
)


def saved_plan(root: Path, out: Path, *extra: str) -> dict:
    """``plan --out``, and the document it wrote."""
    planned = cli("plan", str(root), "--out", str(out), *extra)
    assert planned.code == 2, planned.out + planned.err
    return json.loads(out.read_text())


def rewrite(path: Path, document: dict, key: SigningKey | None = None) -> None:
    """Write an edited plan: its old signature kept, or signed again with ``key``."""
    if key is not None:
        document["signature"] = signature(document, key)
    path.write_text(json.dumps(document, indent=2))


def refused(path: Path, *needles: str) -> str:
    """``apply --plan`` on ``path`` fails with exit 1, names the file, and says ``needles``."""
    result = cli("apply", "--plan", str(path))
    assert result.code == 1, result.out + result.err
    assert str(path) in result.err and all(n in result.err for n in needles), result.err
    return result.err


def actions_of(document: dict, kind: str) -> list[dict]:
    return [action for action in document["hosts"]["hv1"]["actions"] if action["kind"] == kind]


def test_plan_out_signs_with_a_private_key_made_once_on_first_use(sandbox, tmp_path, private_state_folder):
    sandbox.domains(web={})
    key_file = private_state_folder / KEY_FILE_NAME
    assert not private_state_folder.exists()
    first = saved_plan(sandbox.root, tmp_path / "one.json")
    secret = key_file.read_bytes()
    assert len(secret) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_state_folder.stat().st_mode) == 0o700
    assert [p.name for p in private_state_folder.iterdir()] == [KEY_FILE_NAME], "no staged file is left"
    assert first["signature"]["algorithm"] == "HMAC-SHA256"
    assert first["signature"]["keyId"] == SigningKey(key_file, secret).key_id
    second = saved_plan(sandbox.root, tmp_path / "two.json")
    assert key_file.read_bytes() == secret and second["signature"]["keyId"] == first["signature"]["keyId"]
    reindented = tmp_path / "two.json"
    reindented.write_text(json.dumps(second, indent=7, sort_keys=True))  # same content, other layout
    applied = cli("apply", "--plan", str(reindented))
    assert applied.code == 0, applied.out + applied.err
    assert set(sandbox.view()) == {"web"}


def test_an_unsigned_or_edited_plan_is_refused(sandbox, tmp_path):
    sandbox.domains(web={})
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved)
    unsigned = {key: value for key, value in document.items() if key != "signature"}
    rewrite(saved, unsigned)
    refused(saved, "is not signed", "refusing to apply it")
    document["revision"] = "tampered"  # any byte of the document is covered, not only the actions
    rewrite(saved, document)
    refused(saved, "does not match its signature")
    document["signature"]["value"] = "é" * 64  # not even hex: refused, not a crash
    rewrite(saved, document)
    refused(saved, "does not match its signature")
    assert not sandbox.state.exists(), "nothing was applied"


def test_a_plan_signed_with_another_key_is_refused(sandbox, tmp_path):
    sandbox.domains(web={})
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved)
    rewrite(saved, document, SigningKey(tmp_path / "elsewhere.key", secrets.token_bytes(32)))
    refused(saved, "signed with another key", KEY_FILE_ENV)
    assert not sandbox.state.exists()


def test_an_added_undefine_of_an_unmanaged_domain_is_refused(sandbox, tmp_path):
    legacy = render_domain("legacy", DomainSpec.model_validate({"memory": "1GiB"}), None)
    # With a UUID of its own: the test driver gives a domain without one a new UUID on every load.
    sandbox.seed(legacy.replace("</name>", "</name>\n  <uuid>6f1c8a52-2a3e-4d52-9a0c-3b1f0e6d7a11</uuid>"))
    sandbox.domains(web={})
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved)
    undefine = {
        "kind": "undefine",
        "host": "hv1",
        "domain": "legacy",
        "phase": 0,
        "changes": [],
        "restart": False,
        "reason": "",
        "xml": None,
        "autostart": None,
        "spec": None,
        "configMemory": None,
        "liveMemory": None,
        "stopFirst": True,
    }
    document["hosts"]["hv1"]["actions"].insert(0, undefine)
    before = sandbox.state.read_bytes()
    rewrite(saved, document)
    refused(saved, "does not match its signature")
    rewrite(saved, document, signing_key())  # as if the key had leaked: the re-check still refuses
    refused(saved, "undefine 'legacy'", "not managed by virt-reconcile", "nothing was applied")
    assert sandbox.state.read_bytes() == before
    assert set(sandbox.view()) == {"legacy"} and sandbox.view()["legacy"].active


def test_a_define_whose_xml_is_not_its_spec_is_refused(sandbox, tmp_path):
    sandbox.domains(web={})  # 1 vCPU, 1 GiB: what the plan shows and the policy checks
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved)
    define = actions_of(document, "define")[0]
    xml = define["xml"].replace("<vcpu>1</vcpu>", "<vcpu>64</vcpu>")
    shadow = render_domain("x", DomainSpec.model_validate({"memory": "1GiB", "disks": [SHADOW_DISK]}), None)
    shadow_line = next(line for line in shadow.splitlines() if "/etc/shadow" in line)
    xml = xml.replace("  </devices>", shadow_line + "\n  </devices>")
    define["xml"] = xml.replace("</domain>", QEMU_COMMANDLINE + "</domain>")
    rewrite(saved, document)
    refused(saved, "does not match its signature")
    rewrite(saved, document, signing_key())
    err = refused(
        saved, "define 'web'", "its XML and its spec disagree", "vcpus 64 in the XML but 1 in the spec"
    )
    assert "disks[vdz].path '/etc/shadow' in the XML" in err
    assert not sandbox.state.exists()


def test_a_define_with_more_xml_than_its_spec_renders_is_refused(sandbox, tmp_path):
    """Spec, XML and shown changes edited together: the XML still carries what no spec models."""
    sandbox.domains(web={})
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved)
    define = actions_of(document, "define")[0]
    owner = parse_domain(define["xml"]).owner
    define["spec"]["vcpus"] = 2
    define["changes"] = [c if c[0] != "vcpus" else ["vcpus", None, 2] for c in define["changes"]]
    rendered = render_domain("web", DomainSpec.model_validate(define["spec"]), owner)
    define["xml"] = rendered.replace("</domain>", QEMU_COMMANDLINE + "</domain>")
    rewrite(saved, document, signing_key())
    refused(saved, "define 'web'", "is not what its spec renders to")
    define["xml"] = rendered  # now exactly what the spec renders: it applies, as the plan shows
    rewrite(saved, document, signing_key())
    applied = cli("apply", "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    assert sandbox.view()["web"].vcpus == 2 and "qemu:commandline" not in sandbox.view()["web"].xml


def test_the_policy_counts_what_the_xml_defines(sandbox, tmp_path):
    """A plan edited consistently to 64 vCPUs is judged on 64 vCPUs: cpu.perDomain refuses it."""
    sandbox.domains(web={})
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved)
    define = actions_of(document, "define")[0]
    owner = parse_domain(define["xml"]).owner
    define["spec"]["vcpus"] = 64
    define["changes"] = [c if c[0] != "vcpus" else ["vcpus", None, 64] for c in define["changes"]]
    define["xml"] = render_domain("web", DomainSpec.model_validate(define["spec"]), owner)
    rewrite(saved, document, signing_key())
    result = cli("apply", "--plan", str(saved))
    assert result.code == 3 and "cpu.perDomain" in result.out, result.out + result.err
    assert not sandbox.state.exists()


def test_a_changed_host_uri_is_refused(sandbox, tmp_path):
    """Pointed at another host in the same (empty) state, the plan is stale, not applied there."""
    sandbox.domains(web={})
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved)
    other = tmp_path / "other" / "hv1.xml"
    document["hosts"]["hv1"]["uri"] = document["plan"]["hosts"]["hv1"]["uri"] = f"sandbox:{other}"
    rewrite(saved, document)
    refused(saved, "does not match its signature")
    rewrite(saved, document, signing_key())
    refused(saved, "stale", "hv1")
    document["plan"]["hosts"]["hv1"]["uri"] = f"sandbox:{sandbox.state}"  # the plan shows the first host
    rewrite(saved, document, signing_key())
    refused(saved, "the URI to apply on", "is not the one the plan shows")
    assert not other.exists() and not sandbox.state.exists()


def test_a_shared_key_file_carries_plans_from_one_machine_to_another(sandbox, tmp_path, monkeypatch):
    shared = tmp_path / "ci" / "plan.key"
    write_atomically(shared, secrets.token_bytes(32), mode=0o600)
    monkeypatch.setenv(KEY_FILE_ENV, str(shared))
    sandbox.domains(web={})
    saved = tmp_path / "plan.json"
    saved_plan(sandbox.root, saved)  # made in CI with the shared key
    machine_b = tmp_path / "machine-b"
    monkeypatch.setenv(STATE_DIR_ENV, str(machine_b))
    monkeypatch.delenv(KEY_FILE_ENV)
    refused(saved, "no plan signing key", KEY_FILE_ENV)  # machine B has no key of its own yet
    signing_key()  # ...and once it has one, it is not the key the plan was signed with
    refused(saved, "signed with another key")
    monkeypatch.setenv(KEY_FILE_ENV, str(shared))
    applied = cli("apply", "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    assert set(sandbox.view()) == {"web"}


def test_a_shared_key_file_is_never_made_and_must_be_private(sandbox, tmp_path, monkeypatch):
    shared = tmp_path / "ci" / "plan.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(shared))
    sandbox.domains(web={})
    missing = cli("plan", str(sandbox.root), "--out", str(tmp_path / "plan.json"))
    assert missing.code == 1 and f"no plan signing key at {shared}" in missing.err
    assert not shared.exists() and not (tmp_path / "plan.json").exists()
    write_atomically(shared, secrets.token_bytes(32), mode=0o644)
    public = cli("plan", str(sandbox.root), "--out", str(tmp_path / "plan.json"))
    assert public.code == 1 and f"chmod 600 {shared}" in public.err


def test_a_host_blocked_when_planned_stays_blocked(sandbox, tmp_path):
    """A conflict kept the plan from touching hv1: its saved plan does not touch it either."""
    legacy = render_domain("legacy", DomainSpec.model_validate({"memory": "1GiB"}), None)
    sandbox.seed(legacy.replace("</name>", "</name>\n  <uuid>0b7e3c1d-5f2a-4e8b-9c6d-1a2b3c4d5e6f</uuid>"))
    sandbox.domains(legacy={}, web={})
    saved = tmp_path / "plan.json"
    planned = cli("plan", str(sandbox.root), "--out", str(saved))
    assert planned.code == 1 and "nothing will be applied on hv1" in planned.out
    before = sandbox.state.read_bytes()
    applied = cli("apply", "--plan", str(saved))
    assert applied.code == 1 and "not managed" in applied.out, applied.out + applied.err
    assert sandbox.state.read_bytes() == before and set(sandbox.view()) == {"legacy"}


def test_every_kind_of_action_survives_the_saved_plan_round_trip(sandbox, tmp_path):
    """The re-check refuses nothing a real plan holds: update (split in two), autostart alone,
    balloon, stop, undefine, define and start, all from one saved plan."""
    sandbox.domains(
        web={"vcpus": 2, "memory": "2GiB"},
        db={"memory": "2GiB", "currentMemory": "2GiB"},
        batch={},
        old={},
    )
    assert cli("apply", str(sandbox.root)).code == 0
    sandbox.domains(
        web={"vcpus": 4, "memory": "1GiB"},  # more vCPUs, less memory: two redefines
        db={"memory": "2GiB", "currentMemory": "1GiB"},  # balloon down, live and persistent
        batch={"state": "stopped", "autostart": True},  # stop, and autostart alone
        new={},  # define and start; old is undefined
    )
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved, "--allow-delete")
    kinds = [action["kind"] for action in document["hosts"]["hv1"]["actions"]]
    assert {"undefine", "stop", "balloon", "update", "define", "start"} <= set(kinds)
    assert kinds.count("update") == 3, kinds
    applied = cli("apply", "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    assert cli("plan", str(sandbox.root), "--allow-delete").code == 0, "converged"


@given(first=desired_sets, second=desired_sets)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_saved_plan_of_any_change_applies_and_converges(first, second):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write(root, "hosts.yaml", host_yaml(cpus=64, memory="64GiB"))
        write(root, "domains.yaml", "---\n".join(domain_yaml(n, **s) for n, s in first.items()) or "# none\n")
        assert not reconcile(load_manifests(root), connect, ReconcileOptions(apply=True)).failed
        write(
            root, "domains.yaml", "---\n".join(domain_yaml(n, **s) for n, s in second.items()) or "# none\n"
        )
        saved = root / "plan.json"
        planned = cli("plan", str(root), "--out", str(saved))  # orphans kept: undefines are tested above
        assert planned.code in (0, 2), planned.out + planned.err
        applied = cli("apply", "--plan", str(saved))
        assert applied.code == 0, applied.out + applied.err
        assert cli("plan", str(root)).code == 0


@pytest.mark.parametrize("edit", ["kind", "host"])
def test_an_action_moved_out_of_its_phase_or_host_is_refused(sandbox, tmp_path, edit):
    sandbox.domains(web={})
    saved = tmp_path / "plan.json"
    document = saved_plan(sandbox.root, saved)
    start = actions_of(document, "start")[0]
    if edit == "kind":
        start["phase"] = 0  # start the domain before it is defined
        needle = "a start does not run in phase UNDEFINE"
    else:
        start["host"] = "hv2"
        needle = "it names host 'hv2'"
    rewrite(saved, document, signing_key())
    refused(saved, needle)
    assert not sandbox.state.exists()
