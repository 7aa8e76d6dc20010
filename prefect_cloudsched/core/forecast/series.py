"""Input: the shared hourly CSV loader (integer ``hour`` or ISO 8601 ``timestamp``) and
series validation, used by the ``forecast`` and ``plan`` commands and the planning flow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from prefect_cloudsched.errors import InputError

# --------------------------------------------------------------------------- input


TIME_COLUMNS = ("timestamp", "hour")
#: Cells other tools write for a missing value (numpy, R, SQL, spreadsheets); lower case.
MISSING_MARKS = frozenset({"nan", "na", "n/a", "null", "none", "nil", "-", "#n/a", "missing"})


def load_series_csv(path: str | Path, column: str = "gpu_hours") -> pd.Series:
    """Read an hourly CSV into a series (gaps become NaN).

    The time column is either ``timestamp`` (ISO 8601, e.g. ``2026-03-01T13:00:00Z``; offsets
    are converted to UTC and the index is a naive-UTC DatetimeIndex on whole hours) or
    ``hour`` (whole hour numbers). With both, ``timestamp`` is used.

    Raises:
        InputError: missing/empty/malformed file, no time column, missing column (lists the
            available ones), a bad or repeated timestamp/hour, a non-numeric or negative value
            (names the line, the column and the hour).
    """
    path = Path(path)
    frame = _read_csv(path, column)
    time_column = next(c for c in TIME_COLUMNS if c in frame.columns)
    lines = [f"{path.name} line {i + 2}" for i in range(len(frame))]
    if time_column == "timestamp":
        index = _parse_timestamps(frame["timestamp"], lines)
        rows = [f"{line} ({ts.isoformat()})" for line, ts in zip(lines, index, strict=True)]
    else:
        hours = _parse_numbers(frame["hour"], lines, "hour", allow_blank=False)
        fractional = np.flatnonzero(np.mod(hours, 1) != 0)
        if len(fractional):
            raise InputError(f"{lines[fractional[0]]}: hour must be a whole number of hours")
        index = pd.Index(hours.astype(np.int64), name="hour")
        rows = [f"{line} (hour {int(h)})" for line, h in zip(lines, hours, strict=True)]
    values = _parse_numbers(frame[column], rows, column, allow_blank=True)
    series = pd.Series(values, index=index, name=column)
    if series.index.has_duplicates:
        dup = json_label(series.index[series.index.duplicated()][0])
        raise InputError(f"{path.name}: {time_column} {dup} appears twice; keep one row per hour")
    return series


def _read_csv(path: Path, column: str) -> pd.DataFrame:
    """The CSV as strings, checked for a time column, ``column`` and at least one row."""
    if not path.is_file():
        raise InputError(
            f"series file {str(path)!r} does not exist; pass a CSV with an hour or timestamp column"
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
    if not any(c in frame.columns for c in TIME_COLUMNS):
        header = ",".join(str(c) for c in frame.columns)
        separator = next((sep for sep in (";", "\t", "|") if sep in header), None)
        if separator is not None:
            name = {";": "semicolon", "\t": "tab", "|": "pipe"}[separator]
            raise InputError(
                f"{path.name} is {name}-separated (header {header!r}); write it "
                f"comma-separated, e.g. 'hour,{column}'"
            )
        raise InputError(
            f"{path.name} has no 'hour' or 'timestamp' column; add one (hour numbers or "
            "ISO 8601 times)"
        )
    if column not in frame.columns or column in TIME_COLUMNS:
        available = ", ".join(c for c in frame.columns if c not in TIME_COLUMNS) or "none"
        what = "is the time column, not a value" if column in TIME_COLUMNS else "is not a column"
        raise InputError(f"{path.name}: {column!r} {what}; use --column with one of: {available}")
    if frame.empty:
        raise InputError(f"{path.name} has a header but no rows; add hourly values")
    return frame.fillna("")  # rows with missing trailing fields


def _parse_timestamps(raw: pd.Series, lines: list[str]) -> pd.DatetimeIndex:
    """ISO 8601 times -> naive-UTC hourly index, naming the first bad row and the column."""
    text = raw.str.strip()
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"{lines[i]}: timestamp {raw.iloc[i]!r} is not an ISO 8601 time; "
            "write e.g. 2026-03-01T13:00:00Z"
        )
    index = pd.DatetimeIndex(parsed).tz_convert("UTC").tz_localize(None)
    off_hour = np.flatnonzero(index != index.floor("h"))
    if len(off_hour):
        i = int(off_hour[0])
        raise InputError(
            f"{lines[i]}: timestamp {raw.iloc[i]!r} is not on a whole hour; "
            "resample the column to hourly"
        )
    return index.rename("timestamp")


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
        missing = text.iloc[i].lower() in MISSING_MARKS
        fix = "leave the cell blank for a missing hour" if missing else "fix that row"
        raise InputError(f"{rows[i]}: {column} value {raw.iloc[i]!r} is not a number; {fix}")
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


def check_mostly_observed(y: pd.Series) -> None:
    """Refuse a prepared series where most hours have no value: daily or sparser rows taken
    as hourly, whose forecast would be hourly rows invented between the real ones.

    Raises:
        InputError: under half the hours from the first to the last row have a value; names
            the share, the typical spacing of the rows and the fix.
    """
    observed = np.flatnonzero(y.notna().to_numpy())
    share = len(observed) / max(len(y), 1)
    if share >= 0.5:
        return
    spacing = int(np.median(np.diff(observed))) if len(observed) > 1 else len(y)
    looks = " (daily data?)" if spacing % 24 == 0 else ""
    raise InputError(
        f"only {share:.0%} of the {len(y)} hours up to {json_label(y.index[-1])} have a value: "
        f"rows are {spacing} h apart{looks}; the "
        "forecaster needs hourly values: give one row per hour (a blank cell for a missing hour)"
    )


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
