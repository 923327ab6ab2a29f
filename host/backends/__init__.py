"""Backends of the host driver behind one interface (:class:`host.backends.base.Hardware`):
``board`` (real ``pynq``), ``sim`` (``sim/pynq_sim.py`` + the Verilator model), ``ref`` (the integer
reference with a transaction-level timing model)."""
