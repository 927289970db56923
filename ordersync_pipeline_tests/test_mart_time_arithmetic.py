"""The marts' time arithmetic from stored microseconds gives exactly what the ICU forms it replaced gave.

`seconds_between` stands for epoch(later - earlier) and ORDER_WEEK for date_trunc('week', timezone('UTC', ...)):
the same values, compared bit for bit, without ICU's per-row cost.
"""

import duckdb
import pytest

from ordersync_pipeline.assets.marts import LEAD_TIME_DAYS, ORDER_WEEK, seconds_between


@pytest.fixture
def pairs():
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    # Random instants over ~60 years (either order, to the microsecond), plus DST changes, a leap day and ties.
    conn.execute("""
        CREATE TABLE pairs AS
        SELECT TIMESTAMPTZ '1990-01-01 00:00:00+00' + to_microseconds(CAST(random() * 1.9e15 AS BIGINT)) AS order_date,
               TIMESTAMPTZ '1990-01-01 00:00:00+00' + to_microseconds(CAST(random() * 1.9e15 AS BIGINT)) AS delivery_date
        FROM range(200000)
        UNION ALL
        SELECT a::TIMESTAMPTZ, b::TIMESTAMPTZ FROM (VALUES
            ('2025-03-29 06:00:00+00', '2025-03-31 06:00:00.5+00'), ('2025-10-25 23:59:59.999999+00', '2025-10-27 00:00:00+00'),
            ('2024-02-28 12:00:00+00', '2024-03-01 12:00:00+00'), ('2025-06-01 06:00:00+00', '2025-06-01 06:00:00+00'),
            ('2025-06-02 06:00:00+00', '2025-06-01 05:59:59.000001+00')) AS t(a, b)
    """)
    yield conn
    conn.close()


def test_seconds_between_is_epoch_of_the_difference_bit_for_bit(pairs):
    differing = pairs.execute(f"""
        SELECT count(*) FILTER (WHERE {seconds_between('delivery_date', 'order_date')}
                                      IS DISTINCT FROM epoch(delivery_date - order_date)),
               count(*) FILTER (WHERE {LEAD_TIME_DAYS} IS DISTINCT FROM epoch(delivery_date - order_date) / 86400.0),
               count(*) FILTER (WHERE delivery_date < order_date)
        FROM pairs""").fetchall()[0]
    assert differing[:2] == (0, 0)
    assert differing[2] > 90000  # negative spans were compared too


def test_order_week_is_the_utc_week_whatever_the_session_time_zone(pairs):
    for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
        pairs.execute(f"SET TimeZone = '{zone}'")
        differing = pairs.execute(f"""
            SELECT count(*) FILTER (WHERE {ORDER_WEEK}
                                          IS DISTINCT FROM CAST(date_trunc('week', timezone('UTC', order_date)) AS DATE))
            FROM pairs""").fetchall()[0][0]
        assert differing == 0, zone


def test_seconds_between_is_elapsed_time_in_any_session_time_zone(pairs):
    # ICU's TIMESTAMPTZ subtraction counts local calendar days, so across a DST change in a non-UTC session it
    # was an hour off; the stored microseconds are not.
    pairs.execute("SET TimeZone = 'Europe/Berlin'")
    spans = pairs.execute(f"""
        SELECT {seconds_between("TIMESTAMPTZ '2025-03-31 06:00:00+00'", "TIMESTAMPTZ '2025-03-29 06:00:00+00'")},
               {seconds_between("TIMESTAMPTZ '2025-10-27 06:00:00+00'", "TIMESTAMPTZ '2025-10-25 06:00:00+00'")}
    """).fetchall()[0]
    assert spans == (172800.0, 172800.0)
