"""``python -m potluck.jupyter_ext.install``: enable the server extension, the Potluck kernel and the lab extension.

A wheel install does this by itself (its data files land in
``etc/jupyter/jupyter_server_config.d/``, ``share/jupyter/kernels/potluck/`` and
``share/jupyter/labextensions/jupyter-potluck/``); an editable install
(``pip install -e .``) gets no data files, so ``make`` runs this for the
development environment. The lab extension is linked, not copied: a rebuild
(``cd labextension && jlpm build:prod``) shows at the next page load. Idempotent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from importlib import resources

SERVER_CONFIG = {"ServerApp": {"jpserver_extensions": {"potluck.jupyter_ext": True}}}
LABEXTENSION = "jupyter-potluck"        # the npm package name in labextension/package.json


def link_labextension(prefix: str = sys.prefix) -> str | None:
    """Link ``<prefix>/share/jupyter/labextensions/jupyter-potluck`` to the built extension.

    Only where the package runs from a source tree (an editable install) and the
    extension has been built (``jupyter_ext/labextension/package.json``); else None.
    """
    built = resources.files("potluck.jupyter_ext").joinpath("labextension")
    if not isinstance(built, os.PathLike) or not built.joinpath("package.json").is_file():
        return None
    src = os.fspath(built)
    dest_dir = os.path.join(prefix, "share", "jupyter", "labextensions")
    dest = os.path.join(dest_dir, LABEXTENSION)
    os.makedirs(dest_dir, exist_ok=True)
    if os.path.islink(dest):
        if os.path.realpath(dest) == os.path.realpath(src):
            return dest
        os.unlink(dest)
    elif os.path.isdir(dest):
        shutil.rmtree(dest)
    elif os.path.exists(dest):
        os.unlink(dest)
    os.symlink(src, dest, target_is_directory=True)
    return dest


def install(prefix: str = sys.prefix) -> list[str]:
    from jupyter_client.kernelspec import KernelSpecManager

    conf_dir = os.path.join(prefix, "etc", "jupyter", "jupyter_server_config.d")
    os.makedirs(conf_dir, exist_ok=True)
    conf = os.path.join(conf_dir, "potluck.json")
    with open(conf, "w") as f:
        json.dump(SERVER_CONFIG, f, indent=2)
        f.write("\n")
    # From a source tree (an editable install), the other server config files the wheel ships too.
    extra = []
    tree = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jupyter-config",
                        "jupyter_server_config.d")
    for name in sorted(os.listdir(tree)) if os.path.isdir(tree) else ():
        if name.endswith(".json") and name != "potluck.json":
            extra.append(shutil.copyfile(os.path.join(tree, name), os.path.join(conf_dir, name)))
    with resources.as_file(resources.files("potluck.kernel").joinpath("kernelspec")) as spec_dir:
        kernel = KernelSpecManager().install_kernel_spec(str(spec_dir), "potluck", prefix=prefix)
    lab = link_labextension(prefix)
    return [conf, *extra, kernel] + ([lab] if lab else [])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", default=sys.prefix, help="Install under this prefix (default: this Python's).")
    for path in install(p.parse_args(argv).prefix):
        print(f"installed {path}")


if __name__ == "__main__":
    main()
