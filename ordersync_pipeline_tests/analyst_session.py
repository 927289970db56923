"""An analyst's long session on the published file, for test_analyst_sessions: it opens the file read-only,
starts a transaction and a query whose rows it reads a chunk at a time, then answers "ask" on stdin with
the same question again, and "finish" by reading the rest of the held query. Answers are JSON lines."""

import json
import sys

import duckdb

QUESTION = ("SELECT count(*) AS lines, count(DISTINCT order_day) AS days, max(order_day)::VARCHAR AS last_day, "
            "sum(hash(order_status_id, status)) AS fingerprint FROM order_statuses")


def answer(conn: duckdb.DuckDBPyConnection) -> dict:
    lines, days, last_day, fingerprint = conn.execute(QUESTION).fetchall()[0]
    return {"lines": lines, "days": days, "last_day": last_day, "fingerprint": str(fingerprint)}


def main(published: str) -> None:
    conn = duckdb.connect(published, read_only=True)
    conn.execute("BEGIN TRANSACTION")
    first = answer(conn)
    held = conn.cursor()  # a second cursor of the same session, mid-way through a long result
    held.execute("SELECT order_status_id FROM order_statuses ORDER BY order_status_id")
    rows_read = len(held.fetchmany(50))
    print(json.dumps(first), flush=True)
    for command in sys.stdin:
        if command.strip() == "ask":
            print(json.dumps(answer(conn)), flush=True)
        elif command.strip() == "finish":
            rows_read += len(held.fetchall())
            print(json.dumps({"rows_read": rows_read, **answer(conn)}), flush=True)
            return


if __name__ == "__main__":
    main(sys.argv[1])
