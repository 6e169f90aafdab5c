"""The build hook: every build builds the JupyterLab extension itself, as Jupyter's extensions do.

Everything else about the distribution is in ``pyproject.toml``. This file only adds what
setuptools cannot say there: ``pip install .``, ``pip wheel .`` and ``python -m build`` from a
clean clone run ``jlpm install --immutable && jlpm build:prod`` in ``labextension/`` (node is a
*build* requirement, never a runtime one; ``jlpm`` comes from the ``jupyter_builder`` build
requirement), then ship the result as the wheel's data files, next to the server extension's
config and the kernelspec:

    etc/jupyter/jupyter_server_config.d/*.json             (potluck.json enables potluck.jupyter_ext)
    share/jupyter/kernels/potluck/kernel.json               ("Python 3 (Potluck)")
    share/jupyter/labextensions/jupyter-potluck/...         (the prebuilt lab extension)

The data files are listed after the build because the bundle's file names carry content
hashes. An sdist carries the built extension too, so a wheel built from it needs no node.
A tree that has it built already (``make venv``, a developer's ``jlpm build``) is not rebuilt;
``POTLUCK_BUILD_LABEXTENSION=1`` forces a rebuild.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "labextension"                     # the TypeScript sources (npm package jupyter-potluck)
BUILT = HERE / "jupyter_ext" / "labextension"      # where `jlpm build:prod` writes the bundle
LAB_DEST = "share/jupyter/labextensions/jupyter-potluck"
DATA_FILES = [
    # every server config file there (potluck.json enables potluck.jupyter_ext)
    ("etc/jupyter/jupyter_server_config.d",
     sorted(p.relative_to(HERE).as_posix() for p in (HERE / "jupyter-config" / "jupyter_server_config.d").glob("*.json"))),
    ("share/jupyter/kernels/potluck", ["kernel/kernelspec/kernel.json"]),
]


def jlpm(*args: str) -> None:
    # jupyter_builder's jlpm: the yarn that labextension/yarn.lock was written with.
    cmd = [sys.executable, "-c", "import sys; from jupyter_builder.jlpm import main; sys.exit(main())", *args]
    print("building the lab extension:", "jlpm", *args, flush=True)
    subprocess.run(cmd, cwd=SOURCE, check=True)


class build_labextension(Command):
    description = "build the JupyterLab extension (labextension/ -> jupyter_ext/labextension/) and list it"
    user_options: list = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        forced = os.environ.get("POTLUCK_BUILD_LABEXTENSION") == "1"
        if forced or not (BUILT / "package.json").is_file():
            if not (SOURCE / "package.json").is_file():
                raise SystemExit(f"no built lab extension at {BUILT} and no sources at {SOURCE} to build it from")
            if shutil.which("node") is None:
                raise SystemExit("building jupyter-potluck needs Node.js (>= 18) on the PATH, for its JupyterLab "
                                 "extension; install it (e.g. apt-get install nodejs) and build again")
            jlpm("install", "--immutable")
            jlpm("build:prod")
        files: dict[str, list[str]] = {}
        for path in sorted(BUILT.rglob("*")):
            if path.is_file():
                rel = path.relative_to(BUILT).parent.as_posix()
                dest = LAB_DEST if rel == "." else f"{LAB_DEST}/{rel}"
                files.setdefault(dest, []).append(path.relative_to(HERE).as_posix())
        # In place: install_data may already hold this very list.
        data = self.distribution.data_files
        data[:] = [d for d in data if not d[0].startswith(LAB_DEST)] + sorted(files.items())


class build_py_with_labextension(build_py):
    def run(self) -> None:
        self.run_command("build_labextension")
        super().run()


class sdist_with_labextension(sdist):
    def run(self) -> None:
        self.run_command("build_labextension")      # MANIFEST.in then takes the built bundle too
        super().run()


setup(
    data_files=[(dest, list(files)) for dest, files in DATA_FILES],
    cmdclass={"build_labextension": build_labextension, "build_py": build_py_with_labextension,
              "sdist": sdist_with_labextension},
)
