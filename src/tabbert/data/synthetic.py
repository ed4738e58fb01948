"""Synthetic card transactions in the exact layout of IBM's ``card_transaction.v1.csv``.

The generator is the project's built-in data source: it needs no download, is fast (fully
vectorized), and produces histories in which the *sequence* matters, so a model that reads a
window of rows has something to learn that a model of single rows cannot see.

What a user looks like
----------------------
* a home town inside a metro area, 1-5 cards opened at different times (some closed later),
  chip readers from 2014-2016 on (swipe before, chip mostly after), a personal online share;
* a roster of habitual local merchants (each merchant has one MCC, one town and zip) and
  online merchants, visited with skewed frequencies at the merchant's habitual hour of day;
* amounts log-normal per user and MCC; whole-dollar holds reversed minutes later (fuel,
  convenience stores), deposits reversed days later (hotels, car rentals), occasional returns;
* trips to other metros or abroad on one card, with hotels, meals, fuel and taxis there;
* per-user error habits (``Insufficient Balance`` most often), a few PIN/CVV/expiry errors.

Merchants live in one fixed world (their ids depend on town, MCC and a slot, not on the seed),
so data sets drawn with different seeds share their merchant vocabulary.

Fraud
-----
Fraud comes in episodes: a compromised card gets a burst of 3-20 rows within an hour to a few
days, online or in person far from home, at merchants new to the user, at odd hours, with odd
amounts (often a tiny test charge first) and more declined attempts, while the user's own
transactions go on. Many such rows pass for ordinary ones (an online purchase, a meal in
another city); the card's history gives them away. With the defaults (1,000 rows per user,
0.2 % fraud) 300 users give about 310 k rows and about 270 positive windows of 10 rows at
stride 5.

The calibration targets are the published figures of the real file (see
``shared/data/README.md``): Use Chip shares Swipe 63 % / Chip 26 % / Online 11 %, online fraud
rate far above swipe and chip, ~11 % empty Merchant State, ~1.6 % non-empty Errors?, rows up to
2020-02-28 23:59, overall fraud about 0.1-0.2 % of rows.

Users are generated in blocks of 256, each block from its own random stream, so memory stays
bounded per block and the output depends only on the arguments.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from tabbert.atomic import atomic_path
from tabbert.data.schema import MINUTES_PER_DAY
from tabbert.errors import TabbertError

COLUMNS = (
    "User", "Card", "Year", "Month", "Day", "Time", "Amount", "Use Chip", "Merchant Name",
    "Merchant City", "Merchant State", "Zip", "MCC", "Errors?", "Is Fraud?",
)
USE_CHIP = ("Swipe Transaction", "Chip Transaction", "Online Transaction")
ERROR_KINDS = (
    "Bad Card Number", "Bad CVV", "Bad Expiration", "Bad PIN", "Bad Zipcode",
    "Insufficient Balance", "Technical Glitch",
)
DEFAULT_FRAUD_RATE = 0.002
OutputFormat = Literal["csv", "csv.gz", "parquet"]

_SWIPE, _CHIP, _ONLINE = 0, 1, 2
_BAD_CARD, _BAD_CVV, _BAD_EXPIRY, _BAD_PIN, _BAD_ZIP, _NO_FUNDS, _GLITCH = (1 << i for i in range(7))
# Errors? text of every bit mask of ERROR_KINDS (None for no error)
_ERROR_TEXT = tuple(
    ",".join(kind for bit, kind in enumerate(ERROR_KINDS) if mask >> bit & 1) or None
    for mask in range(1 << len(ERROR_KINDS))
)
_USERS_PER_BLOCK = 256


def _minutes(moment: dt.datetime) -> int:
    return int((moment - dt.datetime(1970, 1, 1)).total_seconds()) // 60


_FIRST_MINUTE = _minutes(dt.datetime(1991, 1, 2))
_LAST_MINUTE = _minutes(dt.datetime(2020, 2, 28, 23, 59))
_LATEST_START = _minutes(dt.datetime(2017, 12, 31))
_CHIP_ROLLOUT = (_minutes(dt.datetime(2014, 10, 1)), _minutes(dt.datetime(2016, 6, 30)))

# Metro areas: state, then "Town zip" entries. Local merchants sit in the user's metro; trips
# and in-person fraud happen in another metro or abroad.
_US_METROS = (
    ("CA", "La Verne 91750|Monterey Park 91754|Pasadena 91106|Claremont 91711|Upland 91786|Pomona 91766|"
           "Corona 92881|Mira Loma 91752|West Covina 91790"),
    ("CA", "San Francisco 94110|Oakland 94607|Berkeley 94704|San Jose 95112|Fremont 94536|Palo Alto 94301"),
    ("CA", "San Diego 92101|Chula Vista 91910|Escondido 92025|Oceanside 92054"),
    ("NY", "New York 10001|Brooklyn 11201|Bronx 10451|Yonkers 10701|Staten Island 10301"),
    ("NJ", "Newark 7102|Jersey City 7302|Paterson 7501|Elizabeth 7201|Trenton 8608"),
    ("IL", "Chicago 60645|Evanston 60201|Naperville 60540|Joliet 60432|Aurora 60505"),
    ("IL", "Peoria 61604|Pekin 61554|East Peoria 61611"),
    ("TX", "Houston 77002|Pasadena 77502|Sugar Land 77478|Katy 77449"),
    ("TX", "Dallas 75201|Plano 75023|Irving 75061|Arlington 76010|Fort Worth 76102"),
    ("TX", "Austin 78701|Round Rock 78664|San Antonio 78205|San Marcos 78666"),
    ("FL", "Miami 33125|Hialeah 33010|Fort Lauderdale 33301|Hollywood 33020"),
    ("FL", "Orlando 32801|Kissimmee 34741|Tampa 33602|Clearwater 33755"),
    ("WA", "Seattle 98101|Tacoma 98402|Bellevue 98004|Everett 98201"),
    ("MA", "Boston 2108|Cambridge 2139|Quincy 2169|Worcester 1608"),
    ("MI", "Detroit 48201|Dearborn 48124|Ann Arbor 48104|Warren 48089"),
    ("NV", "Las Vegas 89101|Henderson 89002|North Las Vegas 89030"),
    ("GA", "Atlanta 30303|Marietta 30060|Decatur 30030|Athens 30601"),
    ("PA", "Philadelphia 19103|Chester 19013|Norristown 19401"),
    ("PA", "Pittsburgh 15213|Bethel Park 15102|Monroeville 15146"),
    ("OH", "Columbus 43215|Cleveland 44113|Cincinnati 45202|Dayton 45402"),
    ("AZ", "Phoenix 85004|Mesa 85201|Tempe 85281|Scottsdale 85251|Tucson 85701"),
    ("CO", "Denver 80202|Aurora 80010|Lakewood 80226|Boulder 80302"),
    ("NE", "Lincoln 68521|Omaha 68102|Tilden 68781"),
    ("IA", "Des Moines 50309|Cedar Rapids 52401|Iowa City 52240"),
    ("MN", "Minneapolis 55401|Saint Paul 55101|Bloomington 55420"),
    ("UT", "Salt Lake City 84101|Provo 84601|Ogden 84401"),
    ("HI", "Honolulu 96813|Kailua 96734|Hilo 96720"),
    ("AK", "Anchorage 99501|Fairbanks 99701|Juneau 99801"),
    ("SC", "Columbia 29201|Charleston 29401|Greenville 29601"),
    ("NC", "Charlotte 28202|Raleigh 27601|Durham 27701"),
    ("TN", "Nashville 37203|Memphis 38103|Knoxville 37902"),
    ("MO", "Saint Louis 63101|Kansas City 64106|Springfield 65806"),
    ("LA", "New Orleans 70112|Baton Rouge 70801|Metairie 70001"),
    ("OR", "Portland 97205|Salem 97301|Eugene 97401"),
    ("VA", "Richmond 23219|Norfolk 23510|Virginia Beach 23451"),
    ("MD", "Baltimore 21201|Silver Spring 20910|Annapolis 21401"),
    ("WI", "Milwaukee 53202|Madison 53703|Green Bay 54301"),
    ("IN", "Indianapolis 46204|Fort Wayne 46802|Bloomington 47401"),
    ("KY", "Louisville 40202|Lexington 40507"),
    ("OK", "Oklahoma City 73102|Tulsa 74103|Norman 73069"),
    ("NM", "Albuquerque 87102|Santa Fe 87501"),
    ("AL", "Birmingham 35203|Montgomery 36104|Huntsville 35801"),
    ("CT", "Hartford 6103|New Haven 6510|Stamford 6901"),
    ("KS", "Wichita 67202|Topeka 66603|Overland Park 66210"),
    ("ID", "Boise 83702|Nampa 83651"),
    ("ME", "Portland 4101|Bangor 4401"),
    ("NH", "Manchester 3101|Nashua 3060"),
    ("AR", "Little Rock 72201|Fayetteville 72701"),
    ("MS", "Jackson 39201|Gulfport 39501"),
    ("MT", "Billings 59101|Missoula 59801"),
    ("ND", "Fargo 58102|Bismarck 58501"),
    ("SD", "Sioux Falls 57104|Rapid City 57701"),
    ("WY", "Cheyenne 82001|Casper 82601"),
    ("WV", "Charleston 25301|Morgantown 26505"),
    ("DE", "Wilmington 19801|Dover 19901"),
    ("RI", "Providence 2903|Warwick 2886"),
    ("DC", "Washington 20001"),
)
_ABROAD = (
    "Rome|Italy", "Cancun|Mexico", "Cabo San Lucas|Mexico", "Mexico City|Mexico", "Manila|Philippines",
    "Tokyo|Japan", "Zurich|Switzerland", "Shanghai|China", "Beijing|China", "Toronto|Canada",
    "Vancouver|Canada", "Kingston|Jamaica", "Lisbon|Portugal", "Santo Domingo|Dominican Republic",
    "Tallinn|Estonia", "London|United Kingdom", "Paris|France", "Berlin|Germany", "Madrid|Spain",
    "Amsterdam|Netherlands", "Seoul|South Korea", "Mumbai|India", "Lagos|Nigeria", "Sao Paulo|Brazil",
    "Sydney|Australia", "Bangkok|Thailand", "Dublin|Ireland", "Athens|Greece", "Istanbul|Turkey",
    "Nassau|Bahamas",
)

# MCC: median amount ($), log-sd, and relative weights as a habitual local merchant, an online
# merchant, a purchase on a trip and a fraudster's target; then the chance that a purchase is
# reversed and whether the reversal follows within minutes ("m") or days ("d").
# Hotels (3501-3999, 7011), car rentals (3351-3441) and airlines (3000-3299, 4511) are groups.
_MCC_TABLE = (
    # code median sigma local online travel fraud refund lag
    (5411, 48.0, 0.80, 19.0, 0.0, 6.0, 0.0, 0.00, ""),
    (5912, 55.0, 0.60, 16.0, 0.0, 2.0, 0.0, 0.00, ""),
    (5300, 110.0, 0.45, 9.5, 0.0, 0.0, 1.0, 0.01, "d"),
    (5541, 70.0, 0.50, 8.5, 0.0, 12.0, 0.5, 0.12, "m"),
    (5311, 110.0, 0.45, 4.5, 2.0, 2.0, 4.0, 0.01, "d"),
    (5812, 55.0, 0.70, 5.0, 0.0, 25.0, 1.0, 0.00, ""),
    (5499, 50.0, 0.60, 4.5, 0.0, 5.0, 0.0, 0.10, "m"),
    (5942, 40.0, 0.30, 4.3, 0.3, 1.0, 0.0, 0.01, "d"),
    (7538, 60.0, 0.30, 3.8, 0.0, 0.0, 0.0, 0.00, ""),
    (4900, 120.0, 0.50, 1.6, 6.0, 0.0, 0.0, 0.00, ""),
    (5814, 55.0, 0.70, 2.6, 0.0, 10.0, 0.5, 0.00, ""),
    (4814, 110.0, 0.60, 1.4, 5.0, 0.0, 1.0, 0.00, ""),
    (5310, 60.0, 0.70, 1.1, 0.0, 1.0, 1.0, 0.01, "d"),
    (4829, 140.0, 0.30, 1.1, 0.5, 0.0, 4.0, 0.00, ""),
    (5815, 6.5, 0.30, 0.0, 4.0, 0.0, 2.0, 0.00, ""),
    (7230, 25.0, 0.30, 0.8, 0.0, 0.0, 0.0, 0.00, ""),
    (5211, 55.0, 0.30, 0.7, 0.0, 0.0, 0.0, 0.01, "d"),
    (7832, 26.0, 0.25, 0.7, 0.0, 3.0, 0.0, 0.00, ""),
    (4899, 200.0, 0.25, 0.1, 3.0, 0.0, 0.0, 0.00, ""),
    (5651, 100.0, 0.35, 0.5, 0.3, 1.0, 3.0, 0.02, "d"),
    (7349, 45.0, 0.30, 0.2, 1.0, 0.0, 0.0, 0.00, ""),
    (4722, 250.0, 0.80, 0.0, 1.5, 0.0, 2.0, 0.05, "d"),
    (5193, 40.0, 0.30, 0.2, 1.0, 0.0, 0.0, 0.00, ""),
    (5813, 32.0, 0.30, 0.3, 0.0, 6.0, 0.5, 0.00, ""),
    (5719, 75.0, 0.30, 0.3, 0.1, 0.0, 0.0, 0.01, "d"),
    (6300, 450.0, 0.25, 0.15, 1.0, 0.0, 0.0, 0.00, ""),
    (5970, 64.0, 0.30, 0.25, 0.0, 0.0, 0.0, 0.00, ""),
    (7210, 15.0, 0.25, 0.2, 0.0, 0.0, 0.0, 0.00, ""),
    (7542, 2.1, 0.20, 0.2, 0.0, 0.0, 0.0, 0.00, ""),
    (5921, 3.5, 0.25, 0.18, 0.0, 0.5, 0.0, 0.00, ""),
    (5251, 35.0, 0.50, 0.18, 0.0, 0.0, 0.0, 0.01, "d"),
    (5655, 115.0, 0.30, 0.12, 0.0, 0.0, 1.0, 0.02, "d"),
    (8043, 175.0, 0.30, 0.1, 0.0, 0.0, 0.0, 0.00, ""),
    (8021, 170.0, 0.30, 0.1, 0.0, 0.0, 0.0, 0.00, ""),
    (4214, 25.0, 0.30, 0.09, 0.0, 0.0, 0.0, 0.00, ""),
    (7996, 210.0, 0.40, 0.05, 0.3, 2.0, 0.0, 0.00, ""),
    (8099, 7.0, 0.20, 0.08, 0.0, 0.0, 0.0, 0.00, ""),
    (9402, 27.0, 0.20, 0.08, 0.0, 0.0, 0.0, 0.00, ""),
    (5621, 110.0, 0.30, 0.07, 0.0, 0.0, 1.0, 0.02, "d"),
    (8011, 290.0, 0.20, 0.06, 0.0, 0.0, 0.0, 0.00, ""),
    (7995, 180.0, 0.25, 0.05, 0.0, 0.0, 1.0, 0.00, ""),
    (5712, 420.0, 0.80, 0.04, 0.1, 0.0, 1.0, 0.02, "d"),
    (5661, 85.0, 0.30, 0.03, 0.05, 0.0, 2.0, 0.02, "d"),
    (4131, 98.0, 0.10, 0.03, 0.0, 1.0, 0.0, 0.00, ""),
    (4121, 35.0, 0.30, 0.03, 0.1, 3.0, 0.0, 0.00, ""),
    (8041, 143.0, 0.10, 0.03, 0.0, 0.0, 0.0, 0.00, ""),
    (5094, 105.0, 0.30, 0.03, 0.0, 0.0, 3.0, 0.00, ""),
    (5732, 390.0, 0.80, 0.03, 0.05, 0.0, 6.0, 0.02, "d"),
    (5932, 640.0, 0.30, 0.02, 0.0, 0.0, 0.0, 0.00, ""),
    (8111, 490.0, 0.30, 0.02, 0.0, 0.0, 0.0, 0.00, ""),
    (7802, 160.0, 0.20, 0.01, 0.0, 0.0, 0.0, 0.00, ""),
    (4112, 240.0, 0.50, 0.0, 0.0, 1.0, 0.0, 0.00, ""),
    (1711, 158.0, 0.10, 0.01, 0.0, 0.0, 0.0, 0.00, ""),
    (7531, 480.0, 0.40, 0.01, 0.0, 0.0, 0.0, 0.00, ""),
    (5533, 490.0, 0.40, 0.01, 0.0, 0.0, 0.0, 0.00, ""),
    (8049, 175.0, 0.20, 0.01, 0.0, 0.0, 0.0, 0.00, ""),
    (7801, 160.0, 0.30, 0.0, 0.05, 0.0, 0.0, 0.00, ""),
    (5733, 1100.0, 0.20, 0.005, 0.0, 0.0, 0.0, 0.00, ""),
    (5816, 245.0, 0.50, 0.0, 0.05, 0.0, 2.0, 0.00, ""),
    (4411, 50.0, 0.60, 0.0, 0.01, 0.0, 1.0, 0.00, ""),
    (7922, 97.0, 0.50, 0.0, 0.02, 1.0, 0.0, 0.00, ""),
    (7549, 517.0, 0.30, 0.005, 0.0, 0.0, 0.0, 0.00, ""),
    (5947, 21.0, 0.40, 0.005, 0.0, 1.0, 0.0, 0.00, ""),
    (5045, 600.0, 0.50, 0.005, 0.1, 0.0, 3.0, 0.02, "d"),
    (5999, 60.0, 0.60, 0.2, 0.3, 0.5, 3.0, 0.01, "d"),
    (6051, 300.0, 0.50, 0.0, 0.0, 0.0, 2.0, 0.00, ""),
    (5977, 30.0, 0.40, 0.1, 0.0, 0.0, 0.0, 0.00, ""),
    (5261, 45.0, 0.40, 0.1, 0.0, 0.0, 0.0, 0.00, ""),
    (5722, 500.0, 0.40, 0.02, 0.0, 0.0, 1.0, 0.02, "d"),
    (7276, 200.0, 0.30, 0.02, 0.0, 0.0, 0.0, 0.00, ""),
    (8062, 500.0, 0.60, 0.02, 0.0, 0.0, 0.0, 0.00, ""),
    *((code, 140.0, 0.40, 0.0, 0.0, 12.0 / 11, 0.2, 0.60, "d")
      for code in (3504, 3509, 3596, 3640, 3684, 3722, 3730, 3771, 3775, 3780, 7011)),
    *((code, 135.0, 0.40, 0.0, 0.0, 4.0 / 7, 0.2, 0.60, "d")
      for code in (3359, 3387, 3389, 3390, 3393, 3395, 3405)),
    *((code, 850.0, 0.25, 0.0, 0.05, 0.0, 0.3, 0.05, "d")
      for code in (3000, 3001, 3006, 3007, 3008, 3009, 3058, 3066, 3132, 3174, 3256, 3260, 4511)),
)

# Hour-of-day weights of people (habits, trips) and of fraudsters (half flat, half night).
_DAY_HOURS = np.array([0.3, 0.2, 0.15, 0.15, 0.2, 0.6, 1.5, 1.8, 1.8, 1.8, 1.8, 2.0,
                       2.2, 2.0, 1.8, 1.8, 1.9, 2.0, 2.0, 1.9, 1.6, 1.2, 0.8, 0.5])
_NIGHT_HOURS = _DAY_HOURS.max() + 0.1 - _DAY_HOURS
_FRAUD_HOURS = 0.5 / 24 + 0.5 * _NIGHT_HOURS / _NIGHT_HOURS.sum()


@dataclass(frozen=True)
class _World:
    """Towns, countries and MCCs as arrays; location ``online`` is the last index."""

    city: pl.Series
    state: pl.Series
    zip: np.ndarray            # 0 where the file leaves Zip empty
    metro_first: np.ndarray    # first location index of each US metro
    metro_size: np.ndarray
    n_us: int
    n_abroad: int
    online: int
    mcc: np.ndarray
    median: np.ndarray
    sigma: np.ndarray
    local: np.ndarray
    online_weight: np.ndarray
    travel: np.ndarray
    fraud: np.ndarray
    refund: np.ndarray
    refund_in_days: np.ndarray
    hotel: np.ndarray          # MCC indices of the hotel group
    car: np.ndarray            # MCC indices of the car-rental group


@cache
def _world() -> _World:
    cities, states, zips, metro_first, metro_size = [], [], [], [], []
    for state, towns in _US_METROS:
        entries = [entry.rsplit(" ", 1) for entry in towns.split("|")]
        metro_first.append(len(cities))
        metro_size.append(len(entries))
        cities += [town for town, _ in entries]
        states += [state] * len(entries)
        zips += [int(code) for _, code in entries]
    n_us = len(cities)
    abroad = [entry.split("|") for entry in _ABROAD]
    cities += [city for city, _ in abroad] + ["ONLINE"]
    states += [country for _, country in abroad] + [None]
    zips += [0] * (len(abroad) + 1)
    table = list(zip(*_MCC_TABLE))
    codes = np.array(table[0], dtype=np.int64)
    return _World(
        city=pl.Series(cities, dtype=pl.String),
        state=pl.Series(states, dtype=pl.String),
        zip=np.array(zips, dtype=np.int64),
        metro_first=np.array(metro_first),
        metro_size=np.array(metro_size),
        n_us=n_us,
        n_abroad=len(_ABROAD),
        online=len(cities) - 1,
        mcc=codes,
        median=np.array(table[1]),
        sigma=np.array(table[2]),
        local=np.array(table[3]),
        online_weight=np.array(table[4]),
        travel=np.array(table[5]),
        fraud=np.array(table[6]),
        refund=np.array(table[7]),
        refund_in_days=np.array([lag == "d" for lag in table[8]]),
        hotel=np.flatnonzero(((codes >= 3501) & (codes <= 3999)) | (codes == 7011)),
        car=np.flatnonzero((codes >= 3351) & (codes <= 3441)),
    )


def _mix64(keys: np.ndarray) -> np.ndarray:
    """A fixed 64-bit hash (splitmix64 finalizer) of unsigned keys, as signed ids."""
    x = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (x ^ (x >> np.uint64(31))).view(np.int64)


def _merchant_ids(location: np.ndarray, mcc: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Ids of the fixed merchant world: one merchant per (location, MCC, slot)."""
    code = _world().mcc[mcc].astype(np.uint64)
    return _mix64((location.astype(np.uint64) << np.uint64(40)) | (code << np.uint64(16)) | slot.astype(np.uint64))


def _pick_columns(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One column index per row of ``weights`` (non-negative, each row with a positive sum)."""
    cumulative = np.cumsum(weights, axis=1)
    draw = rng.random(len(weights)) * cumulative[:, -1]
    return (cumulative > draw[:, None]).argmax(axis=1)


def _pick_within(rng: np.random.Generator, owner: np.ndarray, item_owner: np.ndarray,
                 item_weight: np.ndarray) -> np.ndarray:
    """For each row, an item of the row's owner, with probability proportional to its weight.

    Items must be grouped by owner in ascending order, and every owner asked for must own one.
    """
    n_owners = int(item_owner.max()) + 1
    totals = np.bincount(item_owner, item_weight, minlength=n_owners)
    cumulative = np.cumsum(item_weight / totals[item_owner])
    first = np.searchsorted(item_owner, np.arange(n_owners))
    last = np.searchsorted(item_owner, np.arange(n_owners), side="right") - 1
    chosen = np.searchsorted(cumulative, owner + rng.random(len(owner)), side="right")
    return np.clip(chosen, first[owner], last[owner])


def _draw(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    return rng.choice(len(weights), size=size, p=weights / weights.sum())


def _rows_concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


class _Block:
    """The users of one block: their profiles, cards and merchant rosters."""

    def __init__(self, rng: np.random.Generator, n_users: int, rows_per_user: int):
        world = _world()
        self.rng, self.n = rng, n_users
        users = np.arange(n_users)
        self.n_rows = np.maximum(5, np.round(rows_per_user * rng.lognormal(-0.18, 0.6, n_users))).astype(np.int64)
        self.start = rng.integers(_FIRST_MINUTE, _LATEST_START, n_users)
        self.metro = metro = rng.integers(0, len(world.metro_first), n_users)
        self.home = world.metro_first[metro] + rng.integers(0, world.metro_size[metro])
        self.online_share = rng.beta(2.0, 15.0, n_users)
        self.n_travel = rng.binomial(self.n_rows, rng.beta(1.5, 25.0, n_users))
        self.chip_share = rng.beta(8.0, 3.0, n_users)
        self.habit = rng.uniform(0.55, 0.9, n_users)
        self.no_funds = np.minimum(0.2, rng.lognormal(np.log(0.0085), 0.9, n_users))
        self.spend = rng.normal(-0.15, 0.35, n_users)
        n_mcc = len(world.mcc)
        self.amount_mu = np.log(world.median) + self.spend[:, None] + rng.normal(0.0, 0.25, (n_users, n_mcc))
        self.amount_sigma = world.sigma[None, :] * rng.lognormal(0.0, 0.2, (n_users, n_mcc))

        # habitual hours: 2-4 peaks per user with skewed weights
        self.peak_hour = _draw(rng, _DAY_HOURS, n_users * 4).reshape(n_users, 4)
        n_peaks = rng.integers(2, 5, n_users)
        self.peak_weight = rng.gamma(0.8, size=(n_users, 4)) * (np.arange(4) < n_peaks[:, None])
        self.peak_weight[:, 0] += 1e-9

        # cards: card 0 opens with the user, the others later; some of those close again
        n_cards = rng.choice(5, size=n_users, p=[0.15, 0.25, 0.25, 0.2, 0.15]) + 1
        exists = np.arange(5) < n_cards[:, None]
        lifetime = _LAST_MINUTE - 30 * MINUTES_PER_DAY - self.start
        opened = self.start[:, None] + (rng.beta(1.0, 2.0, (n_users, 5)) * lifetime[:, None]).astype(np.int64)
        opened[:, 0] = self.start
        closes = (rng.random((n_users, 5)) < 0.15) & (np.arange(5) > 0)
        closed = np.where(closes, rng.integers(opened, _LAST_MINUTE), _LAST_MINUTE + 1)
        self.card_open = np.where(exists, opened, np.iinfo(np.int64).max)
        self.card_close = closed
        self.card_weight = rng.gamma(1.0, size=(n_users, 5)) * exists
        self.card_weight[:, 0] += 1e-9
        self.chip_from = np.maximum(self.card_open, rng.integers(*_CHIP_ROLLOUT, (n_users, 5)))

        # local merchants: a roster in the home metro, half of them in the home town
        n_local = rng.integers(12, 50, n_users)
        owner = np.repeat(users, n_local)
        mcc = _draw(rng, np.sqrt(world.local), len(owner))
        at_home = rng.random(len(owner)) < 0.5
        nearby = world.metro_first[metro[owner]] + rng.integers(0, world.metro_size[metro[owner]])
        location = np.where(at_home, self.home[owner], nearby)
        slot = rng.integers(0, 8, len(owner))
        self.local = self._roster(owner, location, mcc, slot, np.sqrt(world.local[mcc]))

        # online merchants
        n_online = rng.integers(2, 10, n_users)
        owner = np.repeat(users, n_online)
        mcc = _draw(rng, np.sqrt(world.online_weight), len(owner))
        location = np.full(len(owner), world.online)
        slot = rng.integers(0, 20, len(owner))
        self.web = self._roster(owner, location, mcc, slot, np.sqrt(world.online_weight[mcc]))

    def _roster(self, owner, location, mcc, slot, weight) -> dict[str, np.ndarray]:
        """Merchants with their owner, place, MCC, id, habitual hour and visit weight."""
        rng = self.rng
        peak = _pick_columns(rng, self.peak_weight[owner])
        return {
            "owner": owner, "location": location, "mcc": mcc, "merchant": _merchant_ids(location, mcc, slot),
            "hour": self.peak_hour[owner, peak], "weight": weight * rng.lognormal(0.0, 1.0, len(owner)),
        }

    def _active_card(self, user: np.ndarray, minute: np.ndarray) -> np.ndarray:
        active = (self.card_open[user] <= minute[:, None]) & (minute[:, None] < self.card_close[user])
        active[:, 0] |= ~active.any(axis=1)
        return _pick_columns(self.rng, self.card_weight[user] * active)

    def _in_person(self, user: np.ndarray, card: np.ndarray, minute: np.ndarray, chip_share) -> np.ndarray:
        chip = (minute >= self.chip_from[user, card]) & (self.rng.random(len(user)) < chip_share)
        return np.where(chip, _CHIP, _SWIPE)

    def _amounts(self, user: np.ndarray, mcc: np.ndarray) -> np.ndarray:
        """Cents, log-normal per user and MCC."""
        noise = self.rng.standard_normal(len(user))
        dollars = np.exp(self.amount_mu[user, mcc] + self.amount_sigma[user, mcc] * noise)
        return np.maximum(1, np.round(dollars * 100)).astype(np.int64)

    def habitual_rows(self) -> dict[str, np.ndarray]:
        """Everyday purchases at the user's own local and online merchants."""
        rng = self.rng
        user = np.repeat(np.arange(self.n), self.n_rows - self.n_travel)
        online = rng.random(len(user)) < self.online_share[user]
        local = _pick_within(rng, user, self.local["owner"], self.local["weight"])
        web = _pick_within(rng, user, self.web["owner"], self.web["weight"])
        roster = {key: np.where(online, self.web[key][web], self.local[key][local])
                  for key in ("location", "mcc", "merchant", "hour")}
        hour = np.where(rng.random(len(user)) < self.habit[user], roster["hour"], _draw(rng, _DAY_HOURS, len(user)))
        days = (_LAST_MINUTE - self.start[user]) // MINUTES_PER_DAY
        day = self.start[user] // MINUTES_PER_DAY + 1 + (rng.random(len(user)) * days).astype(np.int64)
        minute = day * MINUTES_PER_DAY + hour * 60 + rng.integers(0, 60, len(user))
        card = self._active_card(user, minute)
        channel = np.where(online, _ONLINE, self._in_person(user, card, minute, self.chip_share[user]))
        return {
            "user": user, "card": card, "minute": minute, "location": roster["location"], "mcc": roster["mcc"],
            "merchant": roster["merchant"], "cents": self._amounts(user, roster["mcc"]), "channel": channel,
            "fraud": np.zeros(len(user), dtype=bool),
        }

    def travel_rows(self) -> dict[str, np.ndarray]:
        """Purchases on trips: one card, another metro or abroad, hotels and meals."""
        rng, world = self.rng, _world()
        n_rows = self.n_travel
        n_trips = np.where(n_rows > 0, np.maximum(1, n_rows // 5), 0)
        trip_user = np.repeat(np.arange(self.n), n_trips)
        n = len(trip_user)
        length = rng.integers(1, 8, n) * MINUTES_PER_DAY
        start = rng.integers(self.start[trip_user], _LAST_MINUTE - length) // MINUTES_PER_DAY * MINUTES_PER_DAY
        destination = self._away(trip_user, abroad_share=0.15)
        card = self._active_card(trip_user, start)
        hotel = world.hotel[rng.integers(0, len(world.hotel), n)]
        car = world.car[rng.integers(0, len(world.car), n)]

        user = np.repeat(np.arange(self.n), n_rows)
        first_trip = np.cumsum(n_trips) - n_trips
        trip = first_trip[user] + (rng.random(len(user)) * n_trips[user]).astype(np.int64)
        drawn = _draw(rng, world.travel, len(user))
        is_hotel, is_car = np.isin(drawn, world.hotel), np.isin(drawn, world.car)
        mcc = np.select([is_hotel, is_car], [hotel[trip], car[trip]], drawn)
        slot = np.where(is_hotel | is_car, 0, rng.integers(0, 4, len(user)))
        minute = (start[trip] + rng.integers(0, length[trip]) // MINUTES_PER_DAY * MINUTES_PER_DAY
                  + _draw(rng, _DAY_HOURS, len(user)) * 60 + rng.integers(0, 60, len(user)))
        location = destination[trip]
        return {
            "user": user, "card": card[trip], "minute": minute, "location": location, "mcc": mcc,
            "merchant": _merchant_ids(location, mcc, slot), "cents": self._amounts(user, mcc),
            "channel": self._in_person(user, card[trip], minute, self.chip_share[user]),
            "fraud": np.zeros(len(user), dtype=bool),
        }

    def _away(self, user: np.ndarray, abroad_share: float) -> np.ndarray:
        """A location outside the user's home metro: another US metro or a city abroad."""
        rng, world = self.rng, _world()
        metro = rng.integers(0, len(world.metro_first) - 1, len(user))
        metro += metro >= self.metro[user]
        us = world.metro_first[metro] + rng.integers(0, world.metro_size[metro])
        abroad = world.n_us + rng.integers(0, world.n_abroad, len(user))
        return np.where(rng.random(len(user)) < abroad_share, abroad, us)

    def fraud_rows(self, n_fraud: int) -> dict[str, np.ndarray]:
        """Episodes on compromised cards, ``n_fraud`` rows in all (a last short one may add two)."""
        rng, world = self.rng, _world()
        sizes = np.clip(np.round(rng.lognormal(np.log(6.5), 0.55, n_fraud // 3 + 1)), 3, 20).astype(np.int64)
        total = np.cumsum(sizes)
        n_episodes = int(np.searchsorted(total, n_fraud)) + 1 if n_fraud else 0
        sizes = sizes[:n_episodes]
        if n_episodes:
            sizes[-1] = max(3, sizes[-1] - (total[n_episodes - 1] - n_fraud))
        victim = _draw(rng, self.n_rows.astype(float), n_episodes)
        duration = np.exp(rng.uniform(np.log(60), np.log(4 * MINUTES_PER_DAY), n_episodes)).astype(np.int64)
        day = rng.integers(self.start[victim], _LAST_MINUTE - duration) // MINUTES_PER_DAY
        start = day * MINUTES_PER_DAY + _draw(rng, _FRAUD_HOURS, n_episodes) * 60 + rng.integers(0, 60, n_episodes)
        card = self._active_card(victim, start)
        online = rng.random(n_episodes) < 0.5
        place = self._away(victim, abroad_share=0.3)

        episode = np.repeat(np.arange(n_episodes), sizes)
        user = victim[episode]
        n = len(episode)
        offset = np.sort(rng.random(n) + episode) - episode
        minute = np.minimum(start[episode] + (offset * duration[episode]).astype(np.int64), _LAST_MINUTE)
        row_online = online[episode] | (rng.random(n) < 0.15)
        mcc = _draw(rng, world.fraud, n)
        location = np.where(row_online, world.online, place[episode])
        slot = np.where(row_online, rng.integers(20, 400, n), rng.integers(0, 8, n))
        dollars = np.exp(np.log(world.median[mcc]) + 0.5 + 0.9 * rng.standard_normal(n))
        cents = np.maximum(1, np.round(dollars * 100)).astype(np.int64)
        test_charge = (np.diff(episode, prepend=-1) != 0) & (rng.random(n) < 0.5)
        cents = np.where(test_charge, rng.integers(100, 1000, n), cents)
        channel = np.where(row_online, _ONLINE, self._in_person(user, card[episode], minute, 0.9))
        return {
            "user": user, "card": card[episode], "minute": minute, "location": location, "mcc": mcc,
            "merchant": _merchant_ids(location, mcc, slot), "cents": cents, "channel": channel,
            "fraud": np.ones(n, dtype=bool),
        }

    def errors(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """Bit mask of error kinds per row; fraudsters fail more often on PIN, CVV and expiry."""
        rng = self.rng
        n, online, fraud = len(rows["user"]), rows["channel"] == _ONLINE, rows["fraud"]
        chances = (
            (_BAD_CARD, np.where(online, np.where(fraud, 0.03, 0.003), 0.0)),
            (_BAD_CVV, np.where(online, np.where(fraud, 0.04, 0.002), 0.0)),
            (_BAD_EXPIRY, np.where(online, np.where(fraud, 0.03, 0.006), 0.0)),
            (_BAD_PIN, np.where(online, 0.0, np.where(fraud, 0.05, 0.0015))),
            (_BAD_ZIP, np.where(online, np.where(fraud, 0.01, 0.001), 0.0)),
            (_NO_FUNDS, np.where(fraud, 0.02, self.no_funds[rows["user"]])),
            (_GLITCH, np.full(n, 0.002)),
        )
        mask = np.zeros(n, dtype=np.int64)
        for bit, chance in chances:
            mask |= np.where(rng.random(n) < chance, bit, 0)
        return mask

    def reversals(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Whole-dollar holds and deposits with their reversals; rounds the originals in place."""
        rng, world = self.rng, _world()
        chosen = np.flatnonzero(~rows["fraud"] & (rng.random(len(rows["mcc"])) < world.refund[rows["mcc"]]))
        rows["cents"][chosen] = np.maximum(100, np.round(rows["cents"][chosen], -2))
        reversed_rows = {key: value[chosen].copy() for key, value in rows.items()}
        in_days = world.refund_in_days[reversed_rows["mcc"]]
        lag = np.where(in_days, rng.integers(MINUTES_PER_DAY // 2, 4 * MINUTES_PER_DAY, len(chosen)),
                       rng.integers(1, 26, len(chosen)) * rng.choice([-1, 1], len(chosen)))
        reversed_rows["minute"] = np.clip(reversed_rows["minute"] + lag, _FIRST_MINUTE, _LAST_MINUTE)
        reversed_rows["cents"] = -reversed_rows["cents"]
        reversed_rows["errors"] = np.zeros(len(chosen), dtype=np.int64)
        return reversed_rows


def _generate_block(seed: int, block: int, n_users: int, rows_per_user: int,
                    fraud_rate: float) -> dict[str, np.ndarray]:
    """The rows of one block of users, sorted by user, card and time."""
    users = _Block(np.random.default_rng([seed, block]), n_users, rows_per_user)
    rows = _rows_concat([users.habitual_rows(), users.travel_rows()])
    rows["errors"] = users.errors(rows)
    rows = _rows_concat([rows, users.reversals(rows)])
    n_fraud = round(fraud_rate * len(rows["user"]) / (1.0 - fraud_rate))
    fraud = users.fraud_rows(n_fraud)
    fraud["errors"] = users.errors(fraud)
    rows = _rows_concat([rows, fraud])
    order = np.lexsort((rows["minute"], rows["card"], rows["user"]))
    rows = {key: value[order] for key, value in rows.items()}
    rows["user"] = rows["user"] + block * _USERS_PER_BLOCK
    return rows


def _two_digits(column: pl.Expr) -> pl.Expr:
    return column.cast(pl.String).str.zfill(2)


def _frame(rows: dict[str, np.ndarray]) -> pl.DataFrame:
    """The rows as the columns of the CSV: integers where it has integers, else strings."""
    world = _world()
    moment = pl.from_epoch(pl.Series(rows["minute"] * 60), time_unit="s")
    town_zip = world.zip[rows["location"]]
    cents = pl.col("cents")
    raw = pl.DataFrame({
        "User": rows["user"],
        "Card": rows["card"],
        "Year": moment.dt.year().cast(pl.Int64),
        "Month": moment.dt.month().cast(pl.Int64),
        "Day": moment.dt.day().cast(pl.Int64),
        "hour": moment.dt.hour(),
        "minute": moment.dt.minute(),
        "cents": rows["cents"],
        "Use Chip": pl.Series(USE_CHIP).gather(rows["channel"]),
        "Merchant Name": rows["merchant"],
        "Merchant City": world.city.gather(rows["location"]),
        "Merchant State": world.state.gather(rows["location"]),
        # a merchant sits in one of the first four zip codes of its town
        "zip": np.where(town_zip > 0, town_zip + ((rows["merchant"] >> 7) & 3), 0),
        "MCC": world.mcc[rows["mcc"]],
        "Errors?": pl.Series(_ERROR_TEXT, dtype=pl.String).gather(rows["errors"]),
        "Is Fraud?": pl.Series(["No", "Yes"]).gather(rows["fraud"].astype(np.int64)),
    })
    return raw.with_columns(
        Time=pl.format("{}:{}", _two_digits(pl.col("hour")), _two_digits(pl.col("minute"))),
        Amount=pl.concat_str(
            pl.lit("$"), pl.when(cents < 0).then(pl.lit("-")).otherwise(pl.lit("")),
            (cents.abs() // 100).cast(pl.String), pl.lit("."), _two_digits(cents.abs() % 100),
        ),
        Zip=pl.when(pl.col("zip") > 0).then(pl.format("{}.0", pl.col("zip"))),
    ).select(COLUMNS)


def generate_transactions(n_users: int, seed: int = 0, *, rows_per_user: int = 1000,
                          fraud_rate: float = DEFAULT_FRAUD_RATE) -> pl.DataFrame:
    """Card transactions of ``n_users`` users in the layout of IBM's card file.

    Columns are :data:`COLUMNS`, holding what the CSV holds: User, Card, Year, Month, Day,
    Merchant Name and MCC as integers, the rest as strings (empty fields as nulls). Rows are
    sorted by User, Card, then time. ``rows_per_user`` is the average number of purchases per
    user (each user's count is log-normal around it; reversals add about 2.5 % more rows);
    ``fraud_rate`` is the share of fraudulent rows.
    The same arguments always give the same frame.
    """
    if n_users < 1:
        raise TabbertError(f"the number of users must be at least 1, got {n_users}")
    if rows_per_user < 1:
        raise TabbertError(f"rows per user must be at least 1, got {rows_per_user}")
    if not 0.0 <= fraud_rate <= 0.5:
        raise TabbertError(f"the fraud rate must lie in [0, 0.5], got {fraud_rate}")
    if seed < 0:
        raise TabbertError(f"the seed must be a non-negative integer, got {seed}")
    blocks = []
    for block, first in enumerate(range(0, n_users, _USERS_PER_BLOCK)):
        size = min(_USERS_PER_BLOCK, n_users - first)
        blocks.append(_frame(_generate_block(seed, block, size, rows_per_user, fraud_rate)))
    return pl.concat(blocks, rechunk=True)


def output_format(path: str | os.PathLike) -> OutputFormat:
    """The file format a path asks for by its suffix: ``.csv``, ``.csv.gz`` or ``.parquet``."""
    name = Path(path).name.lower()
    for suffix in ("csv.gz", "csv", "parquet"):
        if name.endswith("." + suffix):
            return suffix  # type: ignore[return-value]
    raise TabbertError(f"{path}: unknown output type; the file name must end in .csv, .csv.gz or .parquet")


def write_transactions(frame: pl.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` atomically as CSV, gzip CSV or Parquet, chosen by the suffix of ``path``.

    The CSV has the real file's layout: its header line, empty fields for nulls, and quotes only
    around fields that need them (a comma-joined Errors? list).
    """
    path = Path(path)
    kind = output_format(path)
    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as raw:
            if kind == "parquet":
                frame.write_parquet(raw)
            elif kind == "csv.gz":
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed:
                    frame.write_csv(packed)
            else:
                frame.write_csv(raw)
    except OSError as exc:
        raise TabbertError(f"cannot write {path}: {exc.strerror or exc}") from exc
