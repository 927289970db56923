"""Seeded synthetic order lines for one retailer, with statuses that move as the simulator's clock moves.

Each line is generated from (seed, day) alone, so any day can be produced on demand, identically, by
the simulator and by a test computing the truth independently. A line carries its whole future
(when it ships, when it is delivered, or that it is cancelled or stuck); `record_at(now)` shows only
what the API would show at `now`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import threading
from dataclasses import dataclass
from zoneinfo import ZoneInfo

SUPPLIERS = {
    # supplier: (prefix of its own order ids, typical days to ship)
    "cobra puma golf": ("CPG", 1.5),
    "titleist": ("TT", 1.0),
    "callaway": ("CW", 2.0),
    "taylormade": ("TM", 2.5),
    "ping": ("PG", 4.0),
    "mizuno": ("MZ", 3.0),
}
ITEMS = {
    "cobra puma golf": ["Cobra DS Adapt", "Cobra LTDx Driver", "Puma Ignite Shoes"],
    "titleist": ["Pro V1 (dozen)", "Vokey SM10 Wedge", "T200 Irons"],
    "callaway": ["Paradym Driver", "Chrome Soft (dozen)", "Odyssey Putter"],
    "taylormade": ["Qi10 Driver", "TP5 (dozen)", "Spider Tour Putter"],
    "ping": ["G430 Driver", "i230 Irons", "Hoofer Stand Bag"],
    "mizuno": ["JPX923 Irons", "Pro 245 Irons", "T24 Wedge"],
}
CARRIERS = {
    # carrier: (tracking URL template, typical days in transit)
    "fedex": ("https://www.fedex.com/apps/fedextrack/?tracknumbers={n}&cntry_code=US", 3.0),
    "ups": ("https://www.ups.com/track?tracknum={n}", 3.5),
    "usps": ("https://tools.usps.com/go/TrackConfirmAction?tLabels={n}", 5.0),
    "dhl": ("https://www.dhl.com/us-en/home/tracking.html?tracking-id={n}", 4.0),
}
CUSTOMER_ZONES = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Phoenix"]
FIRST_NAMES = ["Tom", "Ana", "Raj", "Mei", "Luis", "Zoë", "Sam", "Priya", "Olu", "Kate", "Jon", "Ines"]
LAST_NAMES = ["Thomas", "García", "Patel", "Chen", "O'Brien", "Müller", "Smith", "Okafor", "Nguyen", "Kim"]
# Statuses the simulator produces. "on_hold" is deliberately outside the documented vocabulary.
STATUSES = ("processing", "backordered", "on_hold", "shipped", "in_transit", "delivered", "cancelled")
# How a sloppy feed spells statuses on the lines SimulatedRetailer(messy_every=n) makes messy.
MESSY_SPELLINGS = {"processing": "PROCESSING", "shipped": "Shipped ", "in_transit": " In_Transit",
                   "delivered": " Delivered ", "cancelled": "CANCELLED"}


@dataclass(frozen=True)
class SimulatedLine:
    """One order line and its whole future; `record_at` is what the API shows at a given moment."""

    order_status_id: str
    order_id: str
    supplier_order_id: str
    po_number: str
    order_date: dt.datetime  # UTC
    item: str
    customer: str
    customer_email: str
    supplier: str
    carrier: str
    tracking_number: str
    customer_zone: str
    timeline: tuple[tuple[dt.datetime, str], ...]  # (from when, status), ascending, first at order_date
    # "spelling": statuses sent in MESSY_SPELLINGS; "delivered_before_ordered": that too, and the carrier
    # reports a delivery_date a day before order_date.
    quirk: str | None = None
    # Upstream changes (SimulatedRetailer's amendment rates): from `date_corrected_at` on, the order's date
    # is a day later (a routine data fix); from `vanishes_at` on, the API no longer returns the line (an
    # order deleted or merged); from `respelled_at` on, its status is sent in upper case.
    date_corrected_at: dt.datetime | None = None
    vanishes_at: dt.datetime | None = None
    respelled_at: dt.datetime | None = None

    def order_date_at(self, now: dt.datetime) -> dt.datetime:
        if self.date_corrected_at is not None and now >= self.date_corrected_at:
            return self.order_date + dt.timedelta(days=1)
        return self.order_date

    def status_at(self, now: dt.datetime) -> str | None:
        current = None
        for since, status in self.timeline:
            if since > now:
                break
            current = status
        return current

    def status_changed_at(self, now: dt.datetime, status: str) -> dt.datetime | None:
        return next((since for since, s in self.timeline if s == status and since <= now), None)

    def record_at(self, now: dt.datetime) -> dict | None:
        status = self.status_at(now)
        if status is None or (self.vanishes_at is not None and now >= self.vanishes_at):
            return None
        shipped = self.status_changed_at(now, "shipped") is not None
        delivered_at = self.status_changed_at(now, "delivered")
        delivery_date = None
        if delivered_at is not None:
            # Real carriers report the local time at the customer's address, to the minute.
            if self.quirk == "delivered_before_ordered":
                delivered_at = self.order_date - dt.timedelta(days=1)
            local = delivered_at.astimezone(ZoneInfo(self.customer_zone)).replace(second=0, microsecond=0)
            delivery_date = local.isoformat()
        if self.quirk is not None:
            status = MESSY_SPELLINGS.get(status, status)
        if self.respelled_at is not None and now >= self.respelled_at:
            status = status.upper()
        return {
            "order_id": self.order_id,
            "order_status_id": self.order_status_id,
            "supplier_order_id": self.supplier_order_id,
            "order_date": self.order_date_at(now).isoformat(timespec="microseconds"),
            "po_number": self.po_number,
            "item": self.item,
            "customer": self.customer,
            "supplier": self.supplier,
            "status": status,
            "customer_email": self.customer_email,
            "tracking_number": self.tracking_number if shipped else None,
            "tracking_url": CARRIERS[self.carrier][0].format(n=self.tracking_number) if shipped else None,
            "carrier": self.carrier if shipped else None,
            "delivery_date": delivery_date,
        }


def _hex_id(*parts: object, length: int) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()[:length]


def _po_number(rng: random.Random, day: dt.date, n: int) -> str:
    # Most PO numbers are plain; some carry characters that must be URL-encoded in a path.
    style = rng.random()
    if style < 0.04:
        return f"PO/{day:%y%m}#{n:04d}"
    if style < 0.06:
        return f"Büro {day:%m%d}-{n} 50%?"
    return f"AB{day:%y%m%d}{n:04d}"


def _timeline(rng: random.Random, order_date: dt.datetime, ship_days: float, transit_days: float) -> tuple:
    hours = dt.timedelta(hours=1)
    steps: list[tuple[dt.datetime, str]] = [(order_date, "processing")]
    fate = rng.random()
    at = order_date
    if fate < 0.05:  # cancelled before shipping
        steps.append((at + rng.uniform(2, 72) * hours, "cancelled"))
        return tuple(steps)
    if fate < 0.07:  # stuck: never leaves processing
        return tuple(steps)
    if fate < 0.15:  # backordered for one to three weeks first
        at += rng.uniform(4, 24) * hours
        steps.append((at, "backordered"))
        at += rng.uniform(7, 21) * 24 * hours
        steps.append((at, "processing"))
    elif fate < 0.17:  # an undocumented status on the way
        at += rng.uniform(4, 24) * hours
        steps.append((at, "on_hold"))
        at += rng.uniform(1, 4) * 24 * hours
        steps.append((at, "processing"))
    at += rng.expovariate(1 / ship_days) * 24 * hours + 2 * hours
    steps.append((at, "shipped"))
    at += rng.uniform(4, 20) * hours
    steps.append((at, "in_transit"))
    if rng.random() < 0.02:  # lost in transit: never delivered
        return tuple(steps)
    at += rng.gammavariate(4, transit_days / 4) * 24 * hours
    steps.append((at, "delivered"))
    return tuple(steps)


class SimulatedRetailer:
    """All order lines of one retailer, generated per day on demand and cached."""

    def __init__(self, seed: int = 7, orders_per_day: int = 200, messy_every: int = 0, id_seed: int | None = None,
                 date_corrections: float = 0.0, vanishing: float = 0.0, respelling: float = 0.0):
        self.seed = seed
        # Order ids (and so supplier order ids) come from id_seed: retailers given the same one share ids, as
        # separate retailers' numbering collides in reality. PO numbers are numbered per day alike anyway.
        self.id_seed = seed if id_seed is None else id_seed
        self.orders_per_day = orders_per_day
        # 1 line in messy_every gets a quirk (see SimulatedLine.quirk); 0 = a tidy feed. Chosen by the line's
        # id, not the seeded draws, so the rest of the data is the same either way.
        self.messy_every = messy_every
        # Shares of orders whose date is corrected a day later 2-5 days after they were placed, of lines that
        # vanish 3-8 days after, and of lines whose status is sent in upper case from 2 days after. Chosen by
        # id, so the seeded data is the same with them off.
        self.date_corrections, self.vanishing, self.respelling = date_corrections, vanishing, respelling
        self._days: dict[dt.date, list[SimulatedLine]] = {}
        self._late: dict[dt.date, list[SimulatedLine]] = {}  # lines injected later (paging drift)
        self._lock = threading.Lock()

    def lines_for_day(self, day: dt.date) -> list[SimulatedLine]:
        """Every line ordered on `day` (UTC), sorted by (order_date, order_status_id)."""
        with self._lock:
            if day not in self._days:
                self._days[day] = self._generate_day(day)
            lines = self._days[day] + self._late.get(day, [])
        return sorted(lines, key=lambda line: (line.order_date, line.order_status_id)) if day in self._late else lines

    def late_line_count(self, day: dt.date) -> int:
        with self._lock:
            return len(self._late.get(day, ()))

    def records_for_day(self, day: dt.date, now: dt.datetime) -> list[dict]:
        """What by-date returns for `day` at `now`: lines already ordered, in API order (a line whose date was
        corrected is returned under its new day)."""
        if not self.date_corrections:
            return [r for line in self.lines_for_day(day) if (r := line.record_at(now)) is not None]
        candidates = self.lines_for_day(day - dt.timedelta(days=1)) + self.lines_for_day(day)
        records = [r for line in candidates
                   if line.order_date_at(now).date() == day and (r := line.record_at(now)) is not None]
        return sorted(records, key=lambda r: (r["order_date"], r["order_status_id"]))

    def add_late_lines(self, day: dt.date, count: int, rng: random.Random) -> list[SimulatedLine]:
        """Insert lines into `day` as if orders arrived late (the cause of paging drift)."""
        start = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
        with self._lock:
            late = self._late.setdefault(day, [])
            new = [
                self._make_line(random.Random(f"{self.seed}-late-{day}-{len(late) + i}"), day, 90_000 + len(late) + i,
                                start + dt.timedelta(seconds=rng.uniform(0, 3600)))
                for i in range(count)
            ]
            late.extend(new)
        return new

    def _generate_day(self, day: dt.date) -> list[SimulatedLine]:
        rng = random.Random(f"{self.seed}-{day.isoformat()}")
        start = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
        order_count = max(1, round(self.orders_per_day * rng.uniform(0.85, 1.15)))
        offsets = sorted(rng.uniform(0, 86_400) for _ in range(order_count))
        lines: list[SimulatedLine] = []
        for n, offset in enumerate(offsets):
            order_date = start + dt.timedelta(seconds=offset)
            lines.extend(self._order_lines(rng, day, n, order_date))
        lines.sort(key=lambda line: (line.order_date, line.order_status_id))
        return lines

    def _order_lines(self, rng: random.Random, day: dt.date, n: int, order_date: dt.datetime) -> list[SimulatedLine]:
        line_count = rng.choices((1, 2, 3, 4), weights=(30, 25, 25, 20))[0]
        # A few orders reuse a PO number from an earlier day (a PO can span orders and days).
        if rng.random() < 0.03 and n > 0:
            earlier = day - dt.timedelta(days=rng.randint(1, 20))
            po_number = _po_number(random.Random(f"{self.seed}-{earlier}-po-{n}"), earlier, n)
        else:
            po_number = _po_number(rng, day, n)
        order_id = _hex_id(self.id_seed, day, n, "order", length=12)
        customer = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        email = f"{customer.split()[0].lower()}.{n}@example.com"
        zone = rng.choice(CUSTOMER_ZONES)
        lines = []
        for i in range(line_count):
            line_rng = random.Random(f"{self.seed}-{day}-{n}-{i}")
            lines.append(self._make_line(line_rng, day, n * 10 + i, order_date, order_id, po_number, customer, email, zone))
        return lines

    def _make_line(self, rng: random.Random, day: dt.date, n: int, order_date: dt.datetime, order_id: str | None = None,
                   po_number: str | None = None, customer: str | None = None, email: str | None = None,
                   zone: str | None = None) -> SimulatedLine:
        supplier = rng.choice(list(SUPPLIERS))
        prefix, ship_days = SUPPLIERS[supplier]
        carrier = rng.choice(list(CARRIERS))
        customer = customer or f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        order_id = order_id or _hex_id(self.id_seed, day, n, "order", length=12)
        order_status_id = _hex_id(self.seed, day, n, "line", length=16)
        return SimulatedLine(
            order_status_id=order_status_id,
            order_id=order_id,
            # The supplier numbers its own order: lines of one order from one supplier share it.
            supplier_order_id=f"{prefix}{_hex_id(order_id, supplier, length=6).upper()}",
            po_number=po_number or _po_number(rng, day, n),
            order_date=order_date,
            item=rng.choice(ITEMS[supplier]),
            customer=customer,
            customer_email=email or f"{customer.split()[0].lower()}.{n}@example.com",
            supplier=supplier,
            carrier=carrier,
            tracking_number=str(rng.randrange(10**11, 10**12)),
            customer_zone=zone or rng.choice(CUSTOMER_ZONES),
            timeline=_timeline(rng, order_date, ship_days, CARRIERS[carrier][1]),
            quirk=self._quirk(order_status_id),
            **self._amendments(order_id, order_status_id, order_date),
        )

    def _amendments(self, order_id: str, order_status_id: str, order_date: dt.datetime) -> dict:
        def draw(*parts: object) -> float:  # a number in [0, 1) from the ids, not from the seeded draws
            return int(_hex_id(self.seed, *parts, length=8), 16) / 16**8
        days = dt.timedelta(days=1)
        amendments = {}
        if draw(order_id, "correct") < self.date_corrections:
            amendments["date_corrected_at"] = order_date + (2 + 3 * draw(order_id, "correct-when")) * days
        if draw(order_status_id, "vanish") < self.vanishing:
            amendments["vanishes_at"] = order_date + (3 + 5 * draw(order_status_id, "vanish-when")) * days
        if draw(order_status_id, "respell") < self.respelling:
            amendments["respelled_at"] = order_date + 2 * days
        return amendments

    def _quirk(self, order_status_id: str) -> str | None:
        if not self.messy_every or int(order_status_id, 16) % self.messy_every:
            return None
        return "delivered_before_ordered" if int(order_status_id, 16) // self.messy_every % 4 == 0 else "spelling"
