"""Load `ordersync_pipeline.definitions` once per bad setting, in one process, and print what each load did.

Usage: python -m ordersync_pipeline_tests.load_with_each_setting FOLDER < [[name, value], ...] (JSON on stdin).
For each pair: the setting is put in the environment, the working directory is a fresh FOLDER/<index>, every
`ordersync_pipeline` module is forgotten, and the definitions are imported as Dagster imports them. Prints a
JSON list of {"loaded": bool, "error": the error's last line}. One process instead of one per setting:
Dagster's own import (~1 s) is paid once; ours runs afresh for each setting.
"""

import importlib
import json
import os
import sys
import traceback
from pathlib import Path


def load_once(name: str, value: str, folder: Path) -> dict:
    for module in [m for m in sys.modules if m == "ordersync_pipeline" or m.startswith("ordersync_pipeline.")]:
        del sys.modules[module]
    folder.mkdir()
    os.chdir(folder)
    os.environ[name] = value
    try:
        importlib.import_module("ordersync_pipeline.definitions")
        return {"loaded": True, "error": None}
    except Exception:  # noqa: BLE001 - what a user would see is the point
        return {"loaded": False, "error": traceback.format_exc().strip().splitlines()[-1]}
    finally:
        del os.environ[name]


def main() -> None:
    root = Path(sys.argv[1])
    settings = json.load(sys.stdin)
    print(json.dumps([load_once(name, value, root / str(i)) for i, (name, value) in enumerate(settings)]))


if __name__ == "__main__":
    main()
