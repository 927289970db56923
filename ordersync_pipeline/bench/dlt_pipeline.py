"""The best-tuned dlt `rest_api` pipeline over the same by-date data, for `ordersync bench` to compare with.

    python -m ordersync_pipeline.bench.dlt_pipeline BASE_URL FIRST_DAY LAST_DAY DUCKDB_FILE WORK_DIR

Run as its own process by bench.py. dlt is not a dependency of the product: `pip install -e ".[bench]"`.
Tuned as far as its documented settings go: 8 date-range resources extracted in parallel (8 workers, like
the pipeline's days in flight), limit 100, page-number paging, merge on order_status_id, jsonl loader
files without compression, large writer buffers, one normalise and load worker per core.
"""

from __future__ import annotations

import datetime as dt
import os
import sys

from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY

PARALLEL_RESOURCES = 8
INSTALL_HINT = 'dlt is not installed: install the benchmark extra with `pip install -e ".[bench]"`'


def tuned_settings(work_dir: str) -> dict[str, str]:
    """dlt's configuration as environment variables, set before dlt is imported."""
    cores = str(os.cpu_count() or 1)
    return {
        "DLT_DATA_DIR": work_dir, "DLT_PROJECT_DIR": work_dir, "RUNTIME__LOG_LEVEL": "WARNING",
        "EXTRACT__WORKERS": str(PARALLEL_RESOURCES), "NORMALIZE__WORKERS": cores, "LOAD__WORKERS": cores,
        "NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION": "true", "DATA_WRITER__BUFFER_MAX_ITEMS": "100000",
        "DATA_WRITER__FILE_MAX_ITEMS": "500000",
    }


def run(base_url: str, first: dt.date, last: dt.date, database: str, work_dir: str) -> int:
    os.environ.update(tuned_settings(work_dir))
    try:
        import dlt
        from dlt.common.jsonpath import compile_path
        from dlt.sources.rest_api import rest_api_source
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 3
    days = (last - first).days + 1
    span = -(-days // PARALLEL_RESOURCES)
    ranges = [(first + dt.timedelta(days=start), min(last, first + dt.timedelta(days=start + span - 1)))
              for start in range(0, days, span)]
    source = rest_api_source({
        "client": {
            "base_url": base_url,
            "auth": {"type": "api_key", "name": "X-API-Key", "api_key": SIMULATOR_API_KEY, "location": "header"},
            "paginator": {"type": "page_number", "base_page": 1, "page_param": "page", "total_path": None,
                          "has_more_path": compile_path("meta.has_more")},
        },
        "resource_defaults": {
            "table_name": "order_statuses", "primary_key": "order_status_id",
            "write_disposition": {"disposition": "merge", "strategy": "delete-insert"}, "parallelized": True,
            # Compiled once: given as text, dlt parses the JSONPath again for every page (~90 ms each here).
            "endpoint": {"data_selector": compile_path("data")},
        },
        "resources": [
            {"name": f"by_date_{start}", "endpoint": {"path": "/api/v1/orders/by-date", "params": {
                "start_date": str(start), "end_date": str(end), "limit": 100}}}
            for start, end in ranges
        ],
    })
    pipeline = dlt.pipeline(pipeline_name="ordersync_bench", destination=dlt.destinations.duckdb(database),
                            dataset_name="ordersync", pipelines_dir=work_dir)
    pipeline.run(source, loader_file_format="jsonl")
    with pipeline.sql_client() as client:
        lines = client.execute_sql("SELECT count(*) FROM order_statuses")[0][0]
    print(lines)
    return 0


if __name__ == "__main__":
    base_url_arg, first_arg, last_arg, database_arg, work_dir_arg = sys.argv[1:6]
    sys.exit(run(base_url_arg, dt.date.fromisoformat(first_arg), dt.date.fromisoformat(last_arg), database_arg,
                 work_dir_arg))
