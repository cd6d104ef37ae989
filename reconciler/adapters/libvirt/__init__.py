"""The libvirt adapter, the only code that imports ``libvirt``: the Hypervisor protocol on libvirt
(``host``), opening connections that cannot hang (``connections``), libvirt's errors as ours
(``errors``), the pre-flight's facts (``environment``), ``doctor``'s facts (``facts``), the daemon's
domain events (``events``) and the per-host apply locks (``hostlock``)."""
