"""Start the MED-TEX MONAI Label server on 127.0.0.1 (monailabel's own default is every interface, 0.0.0.0).

    python apps/monailabel/start.py --studies /path/to/images [--conf model_path models/model.pt] [--port 8000]

Arguments are those of ``monailabel start_server``; ``--app`` defaults to this folder and ``--host`` to 127.0.0.1
(pass ``--host 0.0.0.0`` deliberately to serve other machines). The pydicom alias of pydicom_compat.py is applied
first, in this process, which is the one uvicorn serves from.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent


def server_argv(argv: list[str]) -> list[str]:
    """``monailabel`` command-line arguments: ``start_server`` with this app and 127.0.0.1 unless given."""
    args = list(argv)
    if not args or args[0] != "start_server":
        args.insert(0, "start_server")
    if not {"-a", "--app"} & set(args):
        args += ["--app", str(APP_DIR)]
    if not {"-i", "--host"} & set(args):
        args += ["--host", "127.0.0.1"]
    return args


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(APP_DIR))
    import pydicom_compat

    pydicom_compat.apply()
    from monailabel.main import Main

    sys.argv = [sys.argv[0], *server_argv(sys.argv[1:] if argv is None else argv)]
    Main().run()


if __name__ == "__main__":
    main()
