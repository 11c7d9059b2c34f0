"""Every workaround trimflow needs to drive finn-plus 1.6.1 on a machine without Vivado, in one place.

The facts behind each workaround are measured in /work/shared/notes/finn-without-vivado.md. Other modules must
import FINN's builder only through `finn_builder()` and run FINN code only inside `finn_session(...)`, so that a
version bump of finn-plus is handled here and nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Iterator

from trimflow import FlowError

# A settings file that never exists: FINN reads no user settings from ~/.finn and does not create that directory
# (it mkdirs ~/.finn when no settings path is given, which fails on read-only homes and litters the user's home).
_NO_SETTINGS_FILE = "finn-settings-unused.yaml"


def vivado_available() -> bool:
    """True when a real Vivado installation is on this machine (stitched IP, synthesis and XSim need it)."""
    root = os.environ.get("XILINX_VIVADO", "")
    return bool(root) and Path(root).is_dir() and shutil.which("vivado") is not None


def _neutralise_xsi() -> None:
    # build_dataflow_steps does a module-level `from finn.xsi import SimEngine`; finn.xsi resolves that name lazily
    # through a check for Vivado's XSim that raises OSError without Vivado. The steps module uses the name only in
    # type hints, so a placeholder is enough. With Vivado (and XSim built), leave FINN's real binding alone.
    import finn.xsi

    if "SimEngine" in vars(finn.xsi) or vivado_available():
        return
    finn.xsi.SimEngine = type("SimEngine", (), {"__doc__": "placeholder: FINN's XSim is unavailable (no Vivado)"})


def init_finn_settings(build_dir: str | os.PathLike) -> Path:
    """Point FINN's global settings at `build_dir` (where FINN puts generated code and temporary files).

    Call this (or use `finn_session`) before running any FINN transformation outside the builder, e.g. PrepareIP or
    execute_onnx on HW nodes. Returns the absolute build dir.
    """
    import finn.util.settings as finn_settings
    from finn.interface.settings import FINNSettings

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    settings_file = build_dir / _NO_SETTINGS_FILE
    # Child processes (FINN's multiprocessing workers) rebuild their settings from these variables.
    os.environ["FINN_BUILD_DIR"] = str(build_dir)
    os.environ["FINN_SETTINGS"] = str(settings_file)
    # exit_buildflow() reads XILINX_VIVADO only to name the tool version in metadata_builder.json; an empty value
    # makes that "" instead of a crash. Never overwrite a real installation's value.
    os.environ.setdefault("XILINX_VIVADO", "")
    # FINN caches settings in a module global on first use; replace it so each build gets its own build dir.
    finn_settings._SETTINGS = FINNSettings.init(
        override_settings_path=settings_file,
        flow_config=build_dir / "flow.yaml",
        auto_set_environment_vars=False,
        finn_build_dir=str(build_dir),
    )
    return build_dir


def finn_builder() -> types.SimpleNamespace:
    """Import FINN's dataflow builder with the workarounds applied.

    Returns a namespace with `build` (finn.builder.build_dataflow), `config` (build_dataflow_config),
    `steps` (build_dataflow_steps), and the most used names: `DataflowBuildConfig`, `DataflowOutputType`,
    `ShellFlowType`, `build_dataflow_cfg`, `estimate_only_dataflow_steps`.
    """
    # The builder's imports need settings to exist; a session may not have been opened yet (e.g. tests that only
    # inspect config classes), so fall back to a private build dir that a later finn_session replaces.
    import finn.util.settings as finn_settings

    if finn_settings._SETTINGS is None:
        init_finn_settings(Path(os.environ.get("TMPDIR", "/tmp")) / "trimflow-finn-build")
    _neutralise_xsi()
    try:
        import finn.builder.build_dataflow as build
        import finn.builder.build_dataflow_config as config
        import finn.builder.build_dataflow_steps as steps
    except Exception as e:  # pragma: no cover - only on a broken FINN install
        raise FlowError(
            f"cannot import FINN's builder (finn-plus): {type(e).__name__}: {e}. "
            "Check the venv against env/constraints.txt."
        ) from e
    return types.SimpleNamespace(
        build=build,
        config=config,
        steps=steps,
        DataflowBuildConfig=config.DataflowBuildConfig,
        DataflowOutputType=config.DataflowOutputType,
        ShellFlowType=config.ShellFlowType,
        build_dataflow_cfg=build.build_dataflow_cfg,
        estimate_only_dataflow_steps=list(config.estimate_only_dataflow_steps),
    )


class _FinnStdout(io.TextIOBase):
    """What FINN prints, as records of trimflow's logger: its step lines at INFO ("FINN step_streamline [3/15]"),
    everything else at DEBUG (shown with -v; always in build.log). FINN's builder mirrors every print to the stdout
    it found, time-stamped, together with paths inside a temporary folder that is gone once the stage is done; on
    stdout they would pass -q, which silences only stderr (stdout carries a command's results)."""

    _STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")
    _STEP = re.compile(r"^Running step: (\S+) \[(\d+/\d+)\]")

    def __init__(self) -> None:
        self._line = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # rich asks: no colours, no cursor tricks
        return False

    def write(self, s: str) -> int:
        *done, self._line = (self._line + s).split("\n")
        for line in done:
            self._emit(line)
        return len(s)

    def _emit(self, line: str) -> None:
        line = self._STAMP.sub("", line.rstrip())
        if not line:
            return
        step = self._STEP.match(line)
        if step:
            logging.getLogger("trimflow").info(f"FINN {step[1]} [{step[2]}]")
        else:
            logging.getLogger("trimflow").debug(f"FINN: {line}")

    def flush(self) -> None:
        if self._line:
            self._emit(self._line)
            self._line = ""


@contextlib.contextmanager
def finn_session(build_dir: str | os.PathLike) -> Iterator[types.SimpleNamespace]:
    """Run FINN code with settings pointing at `build_dir`; undo FINN's process-wide side effects afterwards.

    FINN's builder swaps sys.stdout/sys.stderr for loggers that write into its build log, reconfigures the root
    logger (`basicConfig(force=True)`) and captures warnings; none of that is undone when it returns, so later
    prints and pytest's capture would go to a closed log file. We save and restore all of it, plus the environment
    variables we set. While it runs, stdout goes to trimflow's logger (_FinnStdout).
    """
    saved_env = {k: os.environ.get(k) for k in ("FINN_BUILD_DIR", "FINN_SETTINGS", "XILINX_VIVADO")}
    saved_stdio = (sys.stdout, sys.stderr)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    import finn.util.settings as finn_settings

    saved_settings = finn_settings._SETTINGS
    finn_stdout = _FinnStdout()
    try:
        init_finn_settings(build_dir)
        sys.stdout = finn_stdout
        yield finn_builder()
    finally:
        finn_stdout.flush()
        sys.stdout, sys.stderr = saved_stdio
        for h in list(root.handlers):
            if h not in saved_handlers:
                root.removeHandler(h)
                with contextlib.suppress(Exception):
                    h.close()
        for h in saved_handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(saved_level)
        logging.captureWarnings(False)
        finn_settings._SETTINGS = saved_settings
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
