"""virt-reconcile: a declarative, GitOps-style reconciler for KVM hosts managed by libvirt.

The pure core (models, manifests, domxml, diff, plan, render) never touches libvirt; the adapter
``libvirt_host`` is the only module that does, and ``cli`` wires the two together.
"""

__version__ = "0.1.0"
