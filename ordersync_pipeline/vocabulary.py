"""What a status means and how old an open line is: the one definition history, marts, checks and reports use.

The API's status is free text: the documented values, spelled as a sloppy feed may spell them (`Shipped `,
`CANCELLED`), and values the reference never mentions. Every comparison goes through `status_key_sql`
(trimmed, lower-case), so `Shipped` -> `shipped` is no change of status anywhere; tables keep the raw value
for display. Knows SQL text only: no DuckDB connection, no Dagster.
"""

# The statuses the reference and real feeds are known to use. Anything else is kept as sent, treated as
# an open line (it is not known to be finished) and reported by an asset check.
KNOWN_STATUSES = ("processing", "backordered", "shipped", "in_transit", "delivered", "cancelled")
CLOSED_STATUSES = ("delivered", "cancelled")
WITH_CARRIER_STATUSES = ("shipped", "in_transit")

# Age of an open line in whole days from its order day: (label, lowest, highest); the last has no upper bound.
AGE_BUCKETS = (("0-2", 0, 2), ("3-7", 3, 7), ("8-14", 8, 14), ("15-30", 15, 30), ("31+", 31, None))
AGE_BUCKET_LABELS = tuple(label for label, _, _ in AGE_BUCKETS)
AGE_BUCKET_COMMENT = f"Age in whole days from order_day: {', '.join(AGE_BUCKET_LABELS)}"


def sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def status_key_sql(column: str = "status") -> str:
    """The status as compared everywhere: trimmed and lower-case ('' for a missing status)."""
    return f"lower(trim(coalesce({column}, '')))"


def is_open_sql(column: str = "status") -> str:
    """Open = not delivered and not cancelled, whatever the spelling; unknown statuses count as open."""
    return f"{status_key_sql(column)} NOT IN ({sql_list(CLOSED_STATUSES)})"


def is_known_sql(column: str = "status") -> str:
    return f"{status_key_sql(column)} IN ({sql_list(KNOWN_STATUSES)})"


def age_bucket_sql(age_days: str = "age_days") -> str:
    """The AGE_BUCKETS label of a whole number of days."""
    whens = " ".join(f"WHEN {age_days} <= {high} THEN '{label}'" for label, _, high in AGE_BUCKETS if high is not None)
    return f"CASE {whens} ELSE '{AGE_BUCKETS[-1][0]}' END"


def age_bucket_order_sql(column: str = "age_bucket") -> str:
    """Sorts age buckets youngest first."""
    return f"CASE {column} " + " ".join(f"WHEN '{label}' THEN {i}" for i, label in enumerate(AGE_BUCKET_LABELS)) + " END"
