"""``python -m potluck.jupyter_ext.install``: enable the server extension and the Potluck kernel.

A wheel install does this by itself (its data files land in
``etc/jupyter/jupyter_server_config.d/`` and ``share/jupyter/kernels/potluck/``);
an editable install (``pip install -e .``) gets no data files, so ``make``
runs this for the development environment. Idempotent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources

SERVER_CONFIG = {"ServerApp": {"jpserver_extensions": {"potluck.jupyter_ext": True}}}


def install(prefix: str = sys.prefix) -> list[str]:
    from jupyter_client.kernelspec import KernelSpecManager

    conf_dir = os.path.join(prefix, "etc", "jupyter", "jupyter_server_config.d")
    os.makedirs(conf_dir, exist_ok=True)
    conf = os.path.join(conf_dir, "potluck.json")
    with open(conf, "w") as f:
        json.dump(SERVER_CONFIG, f, indent=2)
        f.write("\n")
    with resources.as_file(resources.files("potluck.kernel").joinpath("kernelspec")) as spec_dir:
        kernel = KernelSpecManager().install_kernel_spec(str(spec_dir), "potluck", prefix=prefix)
    return [conf, kernel]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", default=sys.prefix, help="Install under this prefix (default: this Python's).")
    for path in install(p.parse_args(argv).prefix):
        print(f"installed {path}")


if __name__ == "__main__":
    main()
