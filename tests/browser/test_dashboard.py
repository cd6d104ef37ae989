"""The dashboard in a real browser, against a real daemon: a git repository of three sandbox hosts
(libvirt's test driver) and a dozen domains, a push that changes them, the page following by itself."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lxml import html
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import WINDOW
from tests.daemon_helpers import DaemonProcess, Repo
from tests.helpers import REPO, domain_yaml

SECRET = b"s3cret"
SCREENSHOT = REPO / "docs" / "dashboard.png"
#: Long enough for a pass and the page's own refresh (every 5 s) on a busy machine; never waited
#: out when things work: every wait ends as soon as the page shows what it waits for.
PATIENCE = 90
#: name -> (CPUs, memory, vCPUs per CPU); cpu.total limits of 32, 16 and 8 vCPUs.
HOSTS = {"hv-ams-01": (16, "64GiB", 2.0), "hv-ams-02": (8, "32GiB", 2.0), "hv-fra-01": (8, "32GiB", 1.0)}


def volume(name: str, size: str) -> dict[str, object]:
    """A disk whose volume the apply makes in the host's pool."""
    return {"volume": {"pool": "images", "name": name, "size": size}}


#: host -> domain -> spec
FLEET: dict[str, dict[str, dict[str, object]]] = {
    "hv-ams-01": {
        "web-1": {"vcpus": 4, "memory": "8GiB", "disks": [volume("web-1-root", "40GiB")]},
        "web-2": {"vcpus": 4, "memory": "8GiB", "disks": [volume("web-2-root", "40GiB")]},
        "api-1": {"vcpus": 4, "memory": "4GiB"},
        "api-2": {"vcpus": 4, "memory": "4GiB"},
        "cache-1": {"vcpus": 2, "memory": "16GiB"},
    },
    "hv-ams-02": {
        "db-primary": {"vcpus": 8, "memory": "16GiB", "disks": [volume("db-primary-data", "150GiB")]},
        "db-replica": {"vcpus": 4, "memory": "8GiB"},
        "backup": {"vcpus": 1, "memory": "2GiB", "state": "stopped"},
    },
    "hv-fra-01": {
        "ci-runner-1": {"vcpus": 2, "memory": "4GiB"},
        "ci-runner-2": {"vcpus": 2, "memory": "4GiB"},
        "monitoring": {"vcpus": 2, "memory": "4GiB"},
        "mail": {"vcpus": 1, "memory": "2GiB"},
    },
}


def host_yaml(name: str, cpus: int, memory: str, ratio: float) -> str:
    """A sandbox Host whose state file lives in the manifest root (a manifest names no file outside)."""
    return (
        f"apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {{name: {name}}}\n"
        f"spec:\n  uri: sandbox:state/{name}.xml\n  capacity: {{cpus: {cpus}, memory: {memory}}}\n"
        f"  prune: false\n  overcommit: {{cpu: {{ratio: {ratio}}}, memory: {{reserved: 2GiB}}}}\n"
    )


def pool_yaml(host: str) -> str:
    """A dir pool on a sandbox host (the test driver keeps it in its state file; 100 GiB), whose
    volumes may promise twice that: the storage rules show beside the CPU and memory ones."""
    return (
        f"apiVersion: virt-reconcile/v1\nkind: Pool\nmetadata: {{name: images, host: {host}}}\n"
        "spec: {type: dir, path: /var/lib/libvirt/images, overcommit: {ratio: 2.0}}\n"
    )


def manifests(fleet: dict[str, dict[str, dict[str, object]]]) -> dict[str, str]:
    """One file of Hosts and their Pools, one file of Domains per host."""
    documents = [host_yaml(name, *spec) for name, spec in HOSTS.items()] + [pool_yaml(h) for h in HOSTS]
    files = {"hosts.yaml": "---\n".join(documents)}
    for host, domains in fleet.items():
        files[f"{host}.yaml"] = "---\n".join(
            domain_yaml(name, host=host, **spec) for name, spec in domains.items()
        )
    return files


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Repo, DaemonProcess]]:
    repo = Repo(tmp_path)
    first = repo.commit(manifests(FLEET), "a fleet of three hosts")
    process = DaemonProcess(
        "--source", repo.url, "--interval", "1h", secret=SECRET, state_dir=tmp_path / "state"
    ).start()
    try:
        for host in HOSTS:
            process.wait_for(host, timeout=PATIENCE, result="applied", revision=first)
        yield repo, process
    finally:
        process.stop()


def snapshot(driver: WebDriver) -> html.HtmlElement:
    """The page's DOM as the browser holds it at one moment, whole (the page reloads itself every
    few seconds, so separate looks could each see a different load)."""
    found: list[html.HtmlElement] = []

    def whole(d: WebDriver) -> bool:
        tree = html.fromstring(d.page_source)
        found[:] = [tree]
        return bool(tree.xpath("//section[@aria-labelledby='history']"))  # the page's last part

    wait_until(driver, whole, "a whole page")
    return found[0]


def wait_until(driver: WebDriver, condition: Callable[[WebDriver], object], what: str) -> None:
    """Wait for the page (which reloads itself) to satisfy ``condition``."""
    WebDriverWait(
        driver, PATIENCE, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    ).until(condition, f"the dashboard never showed {what}")


def host(tree: html.HtmlElement, name: str) -> html.HtmlElement:
    [article] = tree.xpath("//article[@data-host=$name]", name=name)
    return article


def result_of(tree: html.HtmlElement, name: str) -> str:
    return str(host(tree, name).xpath("string(header/span[contains(@class, 'badge')])"))


def rule_row(tree: html.HtmlElement, name: str, rule: str = "cpu.total") -> html.HtmlElement:
    [row] = host(tree, name).xpath(".//tr[@data-rule=$rule]", rule=rule)
    return row


def domains(tree: html.HtmlElement, name: str) -> dict[str, tuple[str, str]]:
    """Each domain row of a host, in the page's order: name -> (sync, health)."""
    return {
        row.get("data-domain"): (row.get("data-sync"), row.xpath("string(td[3]/span/@data-state)"))
        for row in host(tree, name).xpath(".//tr[@data-domain]")
    }


def shows(name: str, domain: str, sync: str) -> Callable[[WebDriver], bool]:
    """Whether the page shows ``domain`` of host ``name`` in ``sync``."""
    return lambda d: domains(snapshot(d), name).get(domain, ("", ""))[0] == sync


def test_the_dashboard_shows_the_fleet_and_follows_a_push(browser: WebDriver, daemon) -> None:
    repo, process = daemon
    browser.get(process.url + "/")
    assert browser.title == "virt-reconcile"
    # The stylesheet ran under the page's Content-Security-Policy (its hash is allowed).
    wait_until(
        browser,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "body > header").value_of_css_property("background-color")
            in ("rgba(36, 41, 47, 1)", "rgb(36, 41, 47)")
        ),
        "its stylesheet applied",
    )
    tree = snapshot(browser)
    assert tree.xpath("//article/@data-host") == list(HOSTS)
    assert [result_of(tree, name) for name in HOSTS] == ["applied"] * 3

    # How full each host is: cpu.total usage against its limit, amber past 85%.
    fra = rule_row(tree, "hv-fra-01")
    assert fra.get("class") == "level-near" and "7 / 8 vCPUs (88%)" in fra.text_content()
    assert fra.xpath("td/meter/@value") == ["7"] and fra.xpath("td/meter/@high") == ["8"]
    ams = rule_row(tree, "hv-ams-01")
    assert ams.get("class") == "level-ok" and "18 / 32 vCPUs (56%)" in ams.text_content()
    assert rule_row(tree, "hv-ams-02", "memory.commit").xpath("td/meter")  # every rule has its bar
    for name, fleet in FLEET.items():
        shown = domains(tree, name)
        assert sorted(shown) == sorted(fleet) and {sync for sync, _ in shown.values()} == {"synced"}
    assert domains(tree, "hv-ams-02")["backup"][1] == "shutoff"
    assert domains(tree, "hv-ams-01")["web-1"][1] == "running"
    assert tree.xpath("//table[@class='history']/tbody/tr[1]/@data-result") == ["applied"]

    # The push: a new domain, a domain too wide for its host (refused), a running domain widened
    # (a pending restart), one left out of the manifests (prune is off: an orphan).
    fleet = {name: dict(specs) for name, specs in FLEET.items()}
    fleet["hv-ams-01"]["api-3"] = {"vcpus": 2, "memory": "4GiB"}
    fleet["hv-fra-01"]["ci-runner-3"] = {"vcpus": 2, "memory": "4GiB"}
    fleet["hv-ams-02"]["db-replica"] = {"vcpus": 6, "memory": "8GiB"}
    del fleet["hv-ams-02"]["backup"]
    page = browser.find_element(By.TAG_NAME, "html")
    repo.commit(manifests(fleet), "more api, more ci, a wider replica, no backup")
    assert process.webhook() == 202

    WebDriverWait(browser, PATIENCE).until(staleness_of(page), "the dashboard never reloaded itself")
    wait_until(browser, lambda d: result_of(snapshot(d), "hv-fra-01") == "refused", "hv-fra-01 refused")
    wait_until(browser, shows("hv-ams-01", "api-3", "synced"), "api-3 synced")
    wait_until(browser, shows("hv-ams-02", "db-replica", "pendingRestart"), "db-replica's pending restart")
    wait_until(browser, shows("hv-ams-02", "backup", "orphan"), "backup an orphan")
    tree = snapshot(browser)
    assert result_of(tree, "hv-ams-01") == "applied"
    assert "ci-runner-3" in host(tree, "hv-fra-01").xpath("string(.//pre[@class='message'])")
    # The rule that refused it: held at 7 of 8, the push would take it to 9.
    fra = rule_row(tree, "hv-fra-01")
    assert "7 / 8 vCPUs (88%); planned 9 vCPUs (112%)" in fra.text_content()
    assert fra.xpath(".//span[@data-state='refused']") and fra.xpath("td/meter/@value") == ["7"]
    assert "20 / 32 vCPUs" in rule_row(tree, "hv-ams-01").text_content()  # api-3 counted
    # Storage beside CPU and memory: the pool's volumes (thin: they promise, they do not allocate).
    assert "150GiB / 200GiB (75%)" in rule_row(tree, "hv-ams-02", "storage.commit[images]").text_content()
    assert "80GiB / 200GiB (40%)" in rule_row(tree, "hv-ams-01", "storage.commit[images]").text_content()
    assert host(tree, "hv-ams-02").xpath(".//ul[contains(@class, 'pending')]/li/code/text()") == [
        "db-replica"
    ]
    assert "refused" in tree.xpath("//table[@class='history']/tbody/tr/@data-result")
    # Problems first: the orphan and the pending restart head hv-ams-02's table.
    order = [sync for sync, _ in domains(tree, "hv-ams-02").values()]
    assert order[-1] == "synced" and order == sorted(order, key=lambda sync: sync == "synced")

    screenshot(browser, process.state_dir.parent / "dashboard.png")


def screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page at a laptop's width (chromium's own capture, beyond the window's height); also
    docs/dashboard.png (the README's picture) when UPDATE_SCREENSHOT=1."""
    height = driver.find_element(By.TAG_NAME, "html").size["height"]
    clip = {"x": 0, "y": 0, "width": WINDOW[0], "height": height, "scale": 1}
    shot = driver.execute_cdp_cmd(  # type: ignore[attr-defined]
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(path.read_bytes())
