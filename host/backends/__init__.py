"""Backends of the host driver behind one interface (:class:`host.backends.base.Hardware`):
``board`` (real ``pynq``), ``sim`` (``cocotbpynq`` + the Verilator model), ``ref`` (the integer
reference with a transaction-level timing model)."""
