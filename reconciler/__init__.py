"""virt-reconcile: a declarative, GitOps-style reconciler for KVM hosts managed by libvirt.

The pure core (spec, libvirtxml, engine, report) never touches libvirt; the adapters are the only
modules that do, and ``cli`` wires the two together.
"""

#: The one place the version is written: the package metadata reads it (pyproject.toml,
#: ``[tool.setuptools.dynamic]``), and ``virt-reconcile --version`` prints it.
__version__ = "0.1.0"
