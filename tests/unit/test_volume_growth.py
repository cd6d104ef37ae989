"""How the libvirt adapter grows a volume: the order of its steps, by pool type and whether the domain
runs (the test driver has neither volume nor block resize, so the order is checked here, not run)."""

from __future__ import annotations

from reconciler.adapters.libvirt.volumes import growth_steps


def test_a_running_domains_lvm_volume_is_resized_in_its_pool_before_the_guest_is_told():
    # QEMU's block resize cannot grow a block device: lvresize first, then blockResize to that size.
    assert growth_steps(logical=True, live=True) == ("pool", "block")


def test_a_running_domains_image_file_is_grown_by_qemu_alone():
    assert growth_steps(logical=False, live=True) == ("block",)


def test_a_volume_no_running_domain_uses_is_grown_in_its_pool():
    assert growth_steps(logical=True, live=False) == ("pool",)
    assert growth_steps(logical=False, live=False) == ("pool",)


def test_the_test_driver_grows_in_the_pool_only():
    assert growth_steps(logical=True, live=True, test_driver=True) == ("pool",)
