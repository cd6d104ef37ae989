"""Every class of bad input names the file, the line and the field; all problems come together."""

from pathlib import Path

import pytest

from reconciler.errors import ManifestError
from reconciler.spec.hosturi import UriRules
from reconciler.spec.manifests import Source, load_manifests
from tests.helpers import domain_yaml, host_yaml, write


def problems(tmp_path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    return [str(p) for p in info.value.problems]


def test_many_documents_many_files(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml())
    write(
        tmp_path,
        "vms/web.yml",
        """\
        apiVersion: virt-reconcile/v1
        kind: Domain
        metadata: {name: web-01}
        spec: {memory: 1GiB}
        ---
        apiVersion: virt-reconcile/v1
        kind: Domain
        metadata: {name: web-02, host: hv1}
        spec: {memory: 2GiB, currentMemory: 1GiB}
        ---
        """,
    )
    write(tmp_path, ".hidden/ignored.yaml", "not: [valid")
    manifests = load_manifests(tmp_path)
    assert list(manifests.domains["hv1"]) == ["web-01", "web-02"]
    assert manifests.domain_source("hv1", "web-02").file == "vms/web.yml"
    assert manifests.domain_source("hv1", "web-02").line == 6
    assert manifests.hosts["hv1"].spec.uri == f"sandbox:{(tmp_path / 'state/hv1.xml').resolve()}"


def test_sandbox_path_is_relative_to_the_manifest_that_names_it(tmp_path):
    write(tmp_path, "sub/dir/hosts.yaml", host_yaml(state="../st.xml"))
    manifests = load_manifests(tmp_path)
    assert manifests.hosts["hv1"].spec.uri == f"sandbox:{(tmp_path / 'sub/st.xml').resolve()}"


def test_yaml_syntax_error(tmp_path):
    write(tmp_path, "bad.yaml", "apiVersion: virt-reconcile/v1\nkind: [Domain\nmetadata: {}\n")
    [problem] = problems(tmp_path)
    assert problem.startswith("bad.yaml:3: YAML syntax error")


def test_unknown_field(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\n"
        "spec:\n  memory: 1GiB\n  cpus: 2\n",
    )
    assert problems(tmp_path) == ["d.yaml:6: spec.cpus: unknown field; did you mean vcpus?"]


def test_unknown_field_suggests_the_closest_known_one_at_its_level(tmp_path):
    write(
        tmp_path,
        "h.yaml",
        host_yaml()
        + "  overcommit:\n    cpu:\n      ratoi: 2\n    memroy: {ratio: 1}\n"
        + "metdata: {labels: {}}\n",
    )
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\n"
        "spec:\n  memory: 1GiB\n  vcpu: 2\n  curentMemory: 1GiB\n"
        "  disks:\n    - path: /a\n    - path: /b\n      formt: raw\n"
        "  interfaces:\n    - {network: default, mdel: e1000}\n",
    )
    assert problems(tmp_path) == [
        "d.yaml:6: spec.vcpu: unknown field; did you mean vcpus?",
        "d.yaml:7: spec.curentMemory: unknown field; did you mean currentMemory?",
        "d.yaml:11: spec.disks[1].formt: unknown field; did you mean format?",
        "d.yaml:13: spec.interfaces[0].mdel: unknown field; did you mean model?",
        "h.yaml:10: spec.overcommit.cpu.ratoi: unknown field; did you mean ratio?",
        "h.yaml:11: spec.overcommit.memroy: unknown field; did you mean memory?",
        "h.yaml:12: metdata: unknown field; did you mean metadata?",
    ]


def test_unknown_field_far_from_every_known_one_gets_no_suggestion(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a, colour: red}\n"
        "spec:\n  memory: 1GiB\n  zzz: 1\n  disks:\n    - {path: /a, qqq: 1}\n",
    )
    assert problems(tmp_path) == [
        "d.yaml:3: metadata.colour: unknown field",
        "d.yaml:6: spec.zzz: unknown field",
        "d.yaml:8: spec.disks[0].qqq: unknown field",
    ]


def test_a_host_and_a_domain_of_the_same_name_keep_their_own_sources(tmp_path):
    # A host named "Host" and a host "web", and a domain "web" on host "Host": keyed by plain
    # (kind-or-host, name) tuples, the domain's source overwrote the host "web"'s.
    write(tmp_path, "hosts.yaml", host_yaml("web") + "---\n" + host_yaml("Host", "state/Host.xml"))
    write(
        tmp_path,
        "vms.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: web, host: Host}\n"
        "spec: {memory: 1GiB}\n",
    )
    manifests = load_manifests(tmp_path)
    assert sorted((s.file, s.line) for s in manifests.sources.values()) == [
        ("hosts.yaml", 1),
        ("hosts.yaml", 9),
        ("vms.yaml", 1),
    ]
    assert manifests.host_source("web") == Source("hosts.yaml", 1)
    assert manifests.host_source("Host") == Source("hosts.yaml", 9)
    assert manifests.domain_source("Host", "web") == Source("vms.yaml", 1)


def test_bare_number_size(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\n"
        "spec:\n  vcpus: 1\n  memory: 2048\n",
    )
    [problem] = problems(tmp_path)
    assert problem.startswith("d.yaml:6: spec.memory: bare number 2048 is ambiguous")


def test_current_memory_above_memory(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\n"
        "spec:\n  memory: 1GiB\n  currentMemory: 2GiB\n",
    )
    assert problems(tmp_path) == [
        "d.yaml:6: spec.currentMemory: currentMemory 2GiB is larger than memory 1GiB"
    ]


def test_duplicate_domain_on_a_host(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    doc = "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata:\n  name: a\nspec: {memory: 1GiB}\n"
    write(tmp_path, "a.yaml", doc)
    write(tmp_path, "b.yaml", doc)
    assert problems(tmp_path) == [
        "b.yaml:4: metadata.name: domain 'a' on host 'hv1' is already defined at a.yaml:1"
    ]


def test_same_domain_name_on_two_hosts_is_fine(tmp_path):
    write(tmp_path, "h.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    for host in ("hv1", "hv2"):
        write(
            tmp_path,
            f"{host}.yaml",
            f"apiVersion: virt-reconcile/v1\nkind: Domain\n"
            f"metadata: {{name: a, host: {host}}}\nspec: {{memory: 1GiB}}\n",
        )
    manifests = load_manifests(tmp_path)
    assert set(manifests.domains["hv1"]) == set(manifests.domains["hv2"]) == {"a"}


def test_duplicate_host(tmp_path):
    write(tmp_path, "h.yaml", host_yaml() + "---\n" + host_yaml())
    [problem] = problems(tmp_path)
    assert problem.startswith("h.yaml:11: metadata.name: host 'hv1' is already defined at h.yaml:1")


@pytest.mark.parametrize("name", ["-bad", "has space", "x" * 65])
def test_invalid_domain_name(tmp_path, name):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        f"apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata:\n  name: '{name}'\nspec: {{memory: 1GiB}}\n",
    )
    [problem] = problems(tmp_path)
    assert problem.startswith("d.yaml:4: metadata.name: String should match pattern")


def test_unknown_host(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata:\n  name: a\n  host: hv9\n"
        "spec: {memory: 1GiB}\n",
    )
    assert problems(tmp_path) == ["d.yaml:5: metadata.host: unknown host 'hv9' (hosts: hv1)"]


def test_missing_host_with_several_hosts(tmp_path):
    write(tmp_path, "h.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata:\n  name: a\nspec: {memory: 1GiB}\n",
    )
    assert problems(tmp_path) == ["d.yaml:3: metadata.host: required because several hosts exist (hv1, hv2)"]


def test_domain_without_any_host(tmp_path):
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec: {memory: 1GiB}\n",
    )
    assert problems(tmp_path) == ["d.yaml:3: metadata.host: required because no Host document exists"]


def test_wrong_api_version(tmp_path):
    write(tmp_path, "d.yaml", "apiVersion: v2\nkind: Domain\nmetadata: {name: a}\nspec: {memory: 1GiB}\n")
    assert problems(tmp_path) == ["d.yaml:1: apiVersion: expected 'virt-reconcile/v1', got 'v2'"]


def test_wrong_kind(tmp_path):
    write(tmp_path, "d.yaml", "apiVersion: virt-reconcile/v1\nkind: VM\nmetadata: {name: a}\n")
    assert problems(tmp_path) == ["d.yaml:2: kind: expected one of Host, Domain, Pool, got 'VM'"]


def test_document_that_is_not_a_mapping(tmp_path):
    write(tmp_path, "d.yaml", "- just\n- a list\n")
    assert problems(tmp_path) == ["d.yaml:1: a manifest must be a mapping, not list"]


def test_unquoted_mac_gets_a_hint(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec:\n"
        "  memory: 1GiB\n  interfaces:\n    - network: default\n      mac: 52:54:00:12:34:56\n",
    )
    [problem] = problems(tmp_path)
    assert problem.startswith("d.yaml:8: spec.interfaces[0].mac: expected a string")
    assert "put it in quotes" in problem


def test_duplicate_yaml_key(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec:\n"
        "  memory: 1GiB\n  memory: 2GiB\n",
    )
    assert problems(tmp_path) == ["d.yaml:6: spec.memory: duplicate key"]


def test_all_problems_in_the_tree_are_reported_together(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "a.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\n"
        "spec: {memory: 1GiB, bogus: 1}\n---\napiVersion: virt-reconcile/v1\nkind: Domain\n"
        "metadata: {name: b}\nspec: {memory: 3}\n",
    )
    write(tmp_path, "b.yaml", "key: [unclosed\n")
    found = problems(tmp_path)
    assert len(found) == 3
    assert found[0].startswith("a.yaml:4: spec.bogus")
    assert found[1].startswith("a.yaml:9: spec.memory")
    assert found[2].startswith("b.yaml:2: YAML syntax error")


def test_missing_required_field_points_at_the_parent(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec:\n  vcpus: 2\n",
    )
    assert problems(tmp_path) == ["d.yaml:4: spec.memory: required field is missing"]


def test_empty_tree_and_missing_path(tmp_path):
    assert problems(tmp_path) == [f"{tmp_path}: no manifests (*.yaml, *.yml) found"]
    with pytest.raises(ManifestError, match="no such file"):
        load_manifests(tmp_path / "nope")


def test_single_file_path(tmp_path):
    path = write(
        tmp_path,
        "all.yaml",
        host_yaml() + "---\n" + "apiVersion: virt-reconcile/v1\nkind: Domain\n"
        "metadata: {name: a}\nspec: {memory: 1GiB}\n",
    )
    assert list(load_manifests(path).domains["hv1"]) == ["a"]


def test_two_domains_naming_one_disk_image_is_an_error_across_hosts(tmp_path):
    write(tmp_path, "h.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    disk = [{"path": "/var/lib/libvirt/images/shared.qcow2"}]
    write(tmp_path, "a.yaml", domain_yaml("a", "hv1", disks=disk))
    write(tmp_path, "b.yaml", domain_yaml("b", "hv2", disks=[{"path": "/img/own.qcow2"}, *disk]))
    [problem] = problems(tmp_path)
    assert problem.startswith("b.yaml:10: spec.disks[1].path: /var/lib/libvirt/images/shared.qcow2 is")
    assert "already the disk of domain 'a' on host 'hv1' (a.yaml:9)" in problem


def test_one_domain_naming_one_image_twice_is_an_error(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(tmp_path, "a.yaml", domain_yaml("a", disks=[{"path": "/img/a.qcow2"}, {"path": "/img/a.qcow2"}]))
    [problem] = problems(tmp_path)
    assert "spec.disks[1].path: /img/a.qcow2 is named twice" in problem


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("sandbox:state/hv1.xml", "sandbox:./state/../state/hv1.xml"),
        ("qemu+ssh://root@hv1.example.com/system", "qemu+tls://hv1.example.com/system"),
        ("qemu:///system", "qemu+unix:///system"),
    ],
)
def test_two_host_entries_reaching_one_hypervisor_is_an_error(tmp_path, first, second):
    text = host_yaml("hv1").replace("sandbox:state/hv1.xml", first)
    text += "---\n" + host_yaml("hv2").replace("sandbox:state/hv1.xml", second)
    write(tmp_path, "h.yaml", text)
    [problem] = problems(tmp_path)
    assert "spec.uri" in problem and "reaches the same hypervisor as host 'hv1'" in problem


def test_system_and_session_and_other_machines_are_different_hypervisors(tmp_path):
    uris = ["qemu:///system", "qemu:///session", "qemu+ssh://hv2/system", "test+unix:///default?socket=/a"]
    uris += ["test+unix:///default?socket=/b"]
    text = "---\n".join(
        host_yaml(f"hv{index}").replace("sandbox:state/hv1.xml", uri) for index, uri in enumerate(uris)
    )
    write(tmp_path, "h.yaml", text)
    assert len(load_manifests(tmp_path, uri_rules=UriRules.of(params=["socket"])).hosts) == len(uris)


def test_host_uris_are_held_to_the_operators_rules_at_load(tmp_path):
    """A URI parameter or the ext transport passed validation; plan then ran the command it named."""
    uris = ["qemu+ext:///system?command=./payload.sh", "test+unix:///default?socket=/a", "sandbox:/etc/x.xml"]
    text = "---\n".join(
        host_yaml(f"hv{index}").replace("sandbox:state/hv1.xml", uri) for index, uri in enumerate(uris)
    )
    write(tmp_path, "h.yaml", text)
    found = problems(tmp_path)
    assert [p.split(": ")[:2] for p in found] == [[f"h.yaml:{line}", "spec.uri"] for line in (5, 13, 21)]
    assert "transport 'ext' runs a command" in found[0] and "(--allow-uri-transport ext)" in found[0]
    assert "query parameter 'socket' is refused" in found[1] and "(--allow-uri-param socket)" in found[1]
    assert "the sandbox state file /etc/x.xml is outside the manifest root" in found[2]
    rules = UriRules.of(params=["socket", "command"], transports=["ext"])
    write(tmp_path, "h.yaml", text.replace("sandbox:/etc/x.xml", "sandbox:state/x.xml"))
    assert len(load_manifests(tmp_path, uri_rules=rules).hosts) == 3  # the operator allowed them


def test_a_folder_that_cannot_be_read_is_an_error_not_skipped(tmp_path, monkeypatch):
    """Its domains would look deleted, and a prune would undefine them."""
    import os

    write(tmp_path, "hosts.yaml", host_yaml())
    write(tmp_path, "team-a/web.yaml", domain_yaml("web"))
    locked = str(tmp_path / "team-a")
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):  # root ignores permission bits: refuse like EACCES would
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    [problem] = problems(tmp_path)
    assert problem == "team-a: cannot read: Permission denied"
