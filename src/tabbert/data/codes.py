"""Raw-value codes: each categorical field's values as dense integers, with no vocabulary cut-off.

The tokenizer merges rare values into ``[UNK]``, so two different rare merchants share a token.
Features that ask "has this entity used this value before" need the values themselves; these
codes keep them apart. Within one table the same value always gets the same code, and codes of
one field run ``0 .. n_distinct - 1``; null is ``-1``. Codes are not comparable across tables:
``prepare`` and ``predict`` each code their own rows, which is all that per-entity history needs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from tabbert.data.schema import TableSchema

NULL_CODE = -1
DENSE_RANGE_LIMIT = 1 << 22  # integer keys spanning fewer values than this are coded with a lookup table


def categorical_fields(schema: TableSchema) -> list[str]:
    """The schema's categorical input fields, in schema order: the columns of the code matrix."""
    return [spec.name for spec in schema.fields if spec.kind == "categorical"]


def raw_codes(frame: pl.DataFrame, schema: TableSchema, order: np.ndarray | None = None, *,
              threads: int = 1) -> np.ndarray:
    """Codes ``int32 [n_rows, n_categorical_fields]`` of ``frame``'s rows (in ``order`` when given),
    ``threads`` fields at a time."""
    names = categorical_fields(schema)
    codes = np.empty((frame.height, len(names)), dtype=np.int32)

    def fill(j: int) -> None:
        column = dense_codes(frame.get_column(names[j]))
        codes[:, j] = column if order is None else np.take(column, order)

    with ThreadPoolExecutor(max_workers=threads) as pool:  # Polars and NumPy release the GIL
        list(pool.map(fill, range(len(names))))
    return codes


def dense_codes(column: pl.Series) -> np.ndarray:
    """One column's dense codes (int32, null ``-1``), in row order.

    Codes follow the values, not the order of the rows, so a shuffled file gets the same codes.
    Enums, categoricals and integers of a narrow range go through a lookup table of their keys
    (one pass, no hashing; a categorical's keys are ranked by their text, as its physical codes
    follow the order values were first seen in); other columns through one hash map of their
    sorted distinct values.
    """
    if column.null_count() == column.len():
        return np.full(column.len(), NULL_CODE, dtype=np.int32)
    categorical = isinstance(column.dtype, (pl.Categorical, pl.Enum))
    keys = column.to_physical() if categorical else column
    if keys.dtype.is_integer():
        low, high = int(keys.min()), int(keys.max())
        if high - low < DENSE_RANGE_LIMIT:
            shifted = (keys.cast(pl.Int64) - low).fill_null(high - low + 1).to_numpy()
            present = np.bincount(shifted, minlength=high - low + 2).astype(bool)
            present[-1] = False
            code_of_key = np.full(present.size, NULL_CODE, dtype=np.int32)
            present_keys = np.flatnonzero(present)
            if isinstance(column.dtype, pl.Categorical):
                texts = pl.Series(present_keys + low, dtype=keys.dtype).cat.to(column.dtype).cast(pl.String)
                present_keys = present_keys[texts.arg_sort().to_numpy()]
            code_of_key[present_keys] = np.arange(present_keys.size, dtype=np.int32)
            return code_of_key[shifted]
    distinct = column.unique().drop_nulls().sort()  # codes by value, never by the file's order
    codes = column.replace_strict(distinct, pl.int_range(distinct.len(), eager=True), return_dtype=pl.Int32)
    return codes.fill_null(NULL_CODE).to_numpy()
