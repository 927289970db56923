"""An analyst's DuckDB session reaching object storage, run by a venv's python with only duckdb and the
httpfs extension package (no ordersync code): `python remote_analyst.py HOST:PORT KEY_ID SECRET [MEMORY]`.

Loads httpfs from the PyPI package's folder (plain `LOAD httpfs` would try to download it), creates the S3
secret an analyst would, then answers one JSON-encoded SQL string per stdin line with one JSON line:
{"rows": [...]} or {"error": "..."}.
"""

import glob
import json
import os
import sys

import duckdb

endpoint, key_id, secret, memory_limit = (sys.argv[1:] + [""])[:4]
extension = glob.glob(os.path.join(os.path.dirname(duckdb.__file__), "..", "duckdb_ext", "extensions",
                                   f"v{duckdb.__version__}", "*", "httpfs.duckdb_extension"))[0]
conn = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
if memory_limit:
    conn.execute(f"SET memory_limit = '{memory_limit}'")
conn.execute(f"LOAD '{extension}'")
conn.execute(f"CREATE SECRET (TYPE s3, KEY_ID '{key_id}', SECRET '{secret}', REGION 'us-east-1', "
             f"ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)")
for line in sys.stdin:
    try:
        rows = conn.execute(json.loads(line)).fetchall()
        print(json.dumps({"rows": [[str(v) if not isinstance(v, (int, float, str, type(None))) else v for v in row]
                                   for row in rows]}), flush=True)
    except Exception as exc:  # noqa: BLE001 - every error goes back to the test as text
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
