"""The distribution as an admin gets it: built from a clean clone, installed light into a fresh venv.

``pip wheel .`` and ``python -m build`` (sdist, then the wheel from the sdist) run in a fresh
``git clone`` of this repository's committed HEAD, so nothing built in the working tree helps:
the build hook (``setup.py``) must build the lab extension itself (node and npm packages at
build time). The light wheel then goes into a fresh venv (no system site-packages; its
dependencies from PyPI, no torch), where JupyterLab must list the extension enabled, the
server extension enabled and the "Python 3 (Potluck)" kernel.

Takes about 1.5 minutes with warm pip and yarn caches (each build ~20 s, the venv ~60 s);
the first run on a machine downloads JupyterLab's dependencies (~40 packages) and the lab
extension's npm packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
LAB = "share/jupyter/labextensions/jupyter-potluck/"


def sh(*cmd, cwd=None, env=None) -> str:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def data_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n.split(".data/data/", 1)[1] for n in z.namelist() if ".data/data/" in n}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clone") / "jupyter-potluck"
    sh("git", "clone", "--quiet", REPO, path)
    assert not (path / "jupyter_ext" / "labextension").exists()       # built by nothing yet
    return path


@pytest.fixture(scope="module")
def wheel(clone, tmp_path_factory) -> Path:
    """``pip wheel .`` in the clean clone."""
    out = tmp_path_factory.mktemp("wheel")
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", out, ".", cwd=clone)
    (whl,) = out.glob("jupyter_potluck-*.whl")
    return whl


def test_pip_wheel_from_a_clean_clone_carries_the_lab_extension_config_and_kernelspec(wheel):
    files = data_files(wheel)
    assert "etc/jupyter/jupyter_server_config.d/potluck.json" in files
    assert "share/jupyter/kernels/potluck/kernel.json" in files
    assert {LAB + "package.json", LAB + "install.json", LAB + "static/style.js"} <= files
    assert any(f.startswith(LAB + "static/remoteEntry.") for f in files)
    assert LAB + "static/potluck-dashboard.js" in files         # the engine's admin page serves it


def test_python_m_build_makes_an_sdist_whose_wheel_needs_no_node(clone, tmp_path):
    import shutil
    shutil.rmtree(clone / "jupyter_ext" / "labextension")          # undo the previous build
    sh(sys.executable, "-m", "build", "--outdir", tmp_path, cwd=clone)
    (sdist,) = tmp_path.glob("jupyter_potluck-*.tar.gz")
    (whl,) = tmp_path.glob("jupyter_potluck-*.whl")
    import tarfile
    with tarfile.open(sdist) as t:
        names = t.getnames()
    assert any(n.endswith("labextension/src/index.ts") for n in names)          # the sources ...
    assert any(n.endswith("jupyter_ext/labextension/package.json") for n in names)  # ... and the bundle
    assert not any("node_modules" in n for n in names)
    assert LAB + "package.json" in data_files(whl)


def test_the_light_wheel_installs_without_torch_and_jupyterlab_lists_it(wheel, tmp_path):
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)                   # no --system-site-packages
    py, bindir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    sh(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, env=env)
    sh(py, "-c", "import potluck.hub_config, potluck.kernel, potluck.jupyter_ext", env=env)
    missing = subprocess.run([py, "-c", "import torch"], capture_output=True, env=env)
    assert missing.returncode != 0, "the light install pulled in torch"
    labext = sh(bindir / "jupyter", "labextension", "list", env=env)
    line = next((ln for ln in labext.splitlines() if "jupyter-potluck" in ln), "")
    assert "enabled" in line and "OK" in line, labext
    assert "potluck" in sh(bindir / "jupyter", "kernelspec", "list", env=env).split()
    server = sh(bindir / "jupyter", "server", "extension", "list", env=env)
    assert any("potluck.jupyter_ext" in ln and "enabled" in ln for ln in server.splitlines()), server
    # The engine's command says what to install, in one line, rather than a traceback.
    cli = subprocess.run([bindir / "potluck", "token", "list"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert cli.returncode == 1 and cli.stderr.strip().splitlines() == [
        f"potluck: the engine's dependencies are not installed ({cli.stderr.split('(')[1].split(' ')[0]} is missing): "
        "pip install 'jupyter-potluck[engine]'"], cli.stderr
