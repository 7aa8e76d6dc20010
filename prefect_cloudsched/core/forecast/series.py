"""Input: the shared hourly CSV loader (integer ``hour`` or ISO 8601 ``timestamp``) and
series validation, used by the ``forecast`` and ``plan`` commands and the planning flow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from prefect_cloudsched.errors import InputError

# --------------------------------------------------------------------------- input


def load_series_csv(path: str | Path, column: str = "gpu_hours") -> pd.Series:
    """Read ``hour,<columns...>`` into an hourly series indexed by hour (gaps become NaN).

    Raises:
        InputError: missing/empty/malformed file, missing column (lists the available ones),
            non-numeric or negative value (names the line and hour).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"series file {str(path)!r} does not exist; pass a CSV with an hour column"
        )
    if path.stat().st_size == 0:
        raise InputError(f"series file {str(path)!r} is empty; expected a header 'hour,{column}'")
    malformed = (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError,
                 UnicodeDecodeError)  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # a row with extra fields
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except malformed as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise InputError(f"{path.name} is not a valid CSV ({reason}); fix the file") from None
    if "hour" not in frame.columns:
        raise InputError(f"{path.name} has no 'hour' column; the header must start with 'hour'")
    if column not in frame.columns or column == "hour":
        available = ", ".join(c for c in frame.columns if c != "hour") or "none"
        raise InputError(
            f"{path.name} has no column {column!r}; use --column with one of: {available}"
        )
    if frame.empty:
        raise InputError(f"{path.name} has a header but no rows; add hourly values")
    frame = frame.fillna("")  # rows with missing trailing fields
    lines = [f"{path.name} line {i + 2}" for i in range(len(frame))]
    hours = _parse_numbers(frame["hour"], lines, "hour", allow_blank=False)
    fractional = np.flatnonzero(np.mod(hours, 1) != 0)
    if len(fractional):
        raise InputError(f"{lines[fractional[0]]}: hour must be a whole number of hours")
    rows = [f"{line} (hour {int(h)})" for line, h in zip(lines, hours, strict=True)]
    values = _parse_numbers(frame[column], rows, column, allow_blank=True)
    series = pd.Series(values, index=pd.Index(hours.astype(np.int64), name="hour"), name=column)
    if series.index.has_duplicates:
        dup = series.index[series.index.duplicated()][0]
        raise InputError(f"{path.name}: hour {dup} appears twice; keep one row per hour")
    return series


def _parse_numbers(
    raw: pd.Series, rows: list[str], column: str, *, allow_blank: bool
) -> np.ndarray:
    """Parse one CSV column of non-negative numbers, naming the first bad row.

    Blank cells become NaN (a gap) when ``allow_blank``; anything else must be a finite,
    non-negative number.
    """
    text = raw.str.strip()
    blank = (text == "").to_numpy()
    values = pd.to_numeric(text.where(~blank), errors="coerce").to_numpy(dtype=float)
    bad = (np.isnan(values) & ~blank) | np.isinf(values) | (blank & (not allow_blank))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{rows[i]}: {column} value {raw.iloc[i]!r} is not a number; fix that row")
    negative = np.flatnonzero(values < 0)
    if len(negative):
        i = int(negative[0])
        raise InputError(f"{rows[i]}: {column} is negative ({raw.iloc[i]}); demand must be >= 0")
    return values


def prepare_series(series: pd.Series) -> pd.Series:
    """Validate a demand series and reindex it to a gap-free hourly index (gaps become NaN).

    Integer indexes are hour numbers; a DatetimeIndex must sit on whole hours. SARIMAX then
    treats the NaN hours as missing observations (its Kalman filter skips them), so no value
    is invented for the model; only the baselines and ETS see a linearly interpolated copy.

    Raises:
        InputError: empty, non-numeric or negative series, or an index that is not hourly.
    """
    if len(series) == 0:
        raise InputError("the demand series is empty; give at least one day of hourly values")
    values = pd.to_numeric(series, errors="coerce")
    non_numeric = values.isna() & series.notna()
    if non_numeric.any():
        hour = values.index[non_numeric.to_numpy()][0]
        raise InputError(f"demand at hour {hour} is not a number; pass numbers (NaN for gaps)")
    if (values < 0).any():
        hour = values.index[(values < 0).to_numpy()][0]
        raise InputError(f"demand at hour {hour} is negative; demand must be >= 0")
    values = values.sort_index()
    if values.index.has_duplicates:
        raise InputError("the demand series has duplicate hours; keep one value per hour")
    index = values.index
    if isinstance(index, pd.DatetimeIndex):
        if (index != index.floor("h")).any():
            raise InputError("series timestamps must be on whole hours; resample to hourly first")
        full = pd.date_range(index[0], index[-1], freq="h", name=index.name)
    elif pd.api.types.is_integer_dtype(index):
        full = pd.RangeIndex(int(index[0]), int(index[-1]) + 1, name=index.name or "hour")
    else:
        raise InputError("series index must be integer hours or hourly timestamps")
    out = values.reindex(full).astype(float)
    if out.notna().sum() == 0:
        raise InputError("the demand series has no values; every hour is missing")
    return out


def future_index(index: pd.Index, horizon: int) -> pd.Index:
    """The ``horizon`` hours after ``index`` (same type)."""
    if isinstance(index, pd.DatetimeIndex):
        return pd.date_range(index[-1] + pd.Timedelta(hours=1), periods=horizon, freq="h",
                             name=index.name)  # fmt: skip
    return pd.RangeIndex(int(index[-1]) + 1, int(index[-1]) + 1 + horizon, name=index.name)


def json_label(hour) -> object:
    """An hour label JSON can carry: the integer hour or an ISO timestamp."""
    return hour.isoformat() if isinstance(hour, pd.Timestamp) else int(hour)


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise InputError(f"{name} must be at least 1 (got {value})")
