"""Test-session settings."""
import os

import pytest
import torch

# pytest-xdist runs one worker per core: torch's default of one thread per core in every worker
# oversubscribes the machine, and small CPU kernels then slow down many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


LOADGROUP_BROKEN = ("--dist loadgroup did not group the tests marked xdist_group (their node ids have no "
                    "'@group' suffix): this pytest ({}) and pytest-xdist do not work together, and the tests "
                    "that share built simulators would build them on every worker; install constraints.txt's versions")


@pytest.fixture
def _xdist_group_is_broken():
    pytest.fail(LOADGROUP_BROKEN.format(pytest.__version__))


# The xdist groups, longest first (measured on 2 cores: the demo ~300 s, the parts' and the AXI
# top's Verilator models ~280 s and ~230 s, the build's HDL ~50 s): the Makefile turns off xdist's
# own ordering (by test count), so these start first and the short tests fill in around them.
LONGEST_FIRST = ("demo", "tiny_parts", "tiny_axi", "tiny_resnet", "build")


def _group_rank(item) -> int:
    names = [m.args[0] for m in item.iter_markers("xdist_group") if m.args]
    return min((LONGEST_FIRST.index(n) for n in names if n in LONGEST_FIRST), default=len(LONGEST_FIRST))


@pytest.hookimpl(trylast=True)  # after pytest-xdist has (or has not) added the group suffix
def pytest_collection_modifyitems(config, items):
    """Tests marked ``xdist_group`` share built simulators on one worker (``--dist loadgroup``, see
    the Makefile). With pytest 9 and xdist 3.8 the marking does nothing and every worker would
    quietly build them again: those tests then fail, saying why. The groups go first (LONGEST_FIRST)."""
    items.sort(key=_group_rank)  # stable: the rest keep their order
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers only
        return
    for item in items:
        if any(True for _ in item.iter_markers("xdist_group")) and "@" not in item.nodeid:
            item.fixturenames.insert(0, "_xdist_group_is_broken")


@pytest.fixture(scope="session")
def shared_builds(tmp_path_factory):
    """The tiny trees exported and built once per session (tests/fixtures_build.py)."""
    from fixtures_build import SharedBuilds, session_root
    return SharedBuilds(session_root(tmp_path_factory))
