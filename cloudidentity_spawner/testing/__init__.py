"""Test doubles that behave like the real services, for this package's tests, the
local demo, and operators' own tests (install the ``testing`` extra).

* :mod:`.kubernetes` - a strict, in-memory Kubernetes API server on 127.0.0.1
  with list/watch, selectors, validation and a kubelet simulator.
"""
