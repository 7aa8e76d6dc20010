"""Exceptions users see. Each message is one line naming the field and the fix."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

#: A URL in a message: ``scheme://`` and everything up to whitespace (quotes included: a
#: password may hold one, and hiding up to a closing quote only hides too much).
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>\S*)")
#: Query parameters that carry credentials in common drivers' URLs (psycopg, asyncpg, pymysql).
SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "key")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&;#]*(?:" + "|".join(SECRET_QUERY_KEYS) + r")[^=&;#]*=)[^&;#]*",
    re.IGNORECASE,
)


def hide_url_secrets(text: str) -> str:
    """Every URL password in ``text`` replaced by ``***``: userinfo and query string.

    The password is everything between the user's ``:`` and the *last* ``@`` before the
    query string (a password may itself hold ``@``, ``:`` or ``/``); a query parameter whose
    name mentions a password, secret, token or key has its value hidden too. It hides too
    much rather than too little.
    """

    def hide(match: re.Match[str]) -> str:
        rest = match.group("rest")
        userinfo = _userinfo(rest)
        if userinfo is not None:
            user, _secret, at = userinfo
            rest = f"{user}:***{rest[at:]}"
        rest = _SECRET_QUERY.sub(lambda m: f"{m.group('name')}***", rest)
        return f"{match.group('scheme')}{rest}"

    return _URL.sub(hide, text)


def _userinfo(rest: str) -> tuple[str, str, int] | None:
    """``(user, password, index of the "@" ending it)`` of a URL after its ``scheme://``,
    or ``None`` when it names no password."""
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    # The last "@" before the query; none there: a "?" or "#" may sit in the password.
    at = rest.rfind("@", 0, cut)
    at = rest.rfind("@") if at < 0 else at
    if at < 0:
        return None
    user, colon, secret = rest[:at].partition(":")
    return (user, secret, at) if colon and "/" not in user else None


def scrub_secrets_of(url: str, text: str) -> str:
    """``text`` (a driver's message about ``url``) with every piece of ``url``'s secrets
    hidden: a driver that split a password holding ``@`` may quote half of it as a host."""
    secrets = [m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer(url)]
    for match in _URL.finditer(url):
        userinfo = _userinfo(match.group("rest"))
        if userinfo is not None:
            secrets.append(userinfo[1])
    pieces = {p for s in secrets for p in (s, *re.split(r"[@:/?#%]", s)) if len(p) >= 3}
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "***")
    return hide_url_secrets(text)


class _Overrun(Protocol):
    """What a budget error says about the cap it hit (``core.budget.Overrun``)."""

    cap: str
    #: Found while the placement ran (it is stopped), not at admission (it is refused).
    running: bool

    def describe(self) -> str: ...


class CloudSchedError(Exception):
    """Base class for every error this package raises on purpose."""


class NeedsError(CloudSchedError, ValueError):
    """A task's declared needs (decorator, tag or override) are invalid."""


class NoFeasibleOffer(CloudSchedError):
    """No offer in the catalog can meet a task's needs under the active policy."""


class LedgerError(CloudSchedError):
    """The ledger database cannot be opened or has an unexpected schema."""


class SpotInterrupted(CloudSchedError):
    """The spot instance a task ran on was reclaimed by the cloud.

    Raised inside the task so that Prefect's ``retries`` + ``retry_condition_fn`` re-run it,
    and the runner re-places the retry with the interruption taken into account.
    """

    def __init__(self, instance_id: str, offer_key: str, message: str = "") -> None:
        self.instance_id = instance_id
        self.offer_key = offer_key
        super().__init__(
            message or f"spot instance {instance_id} ({offer_key}) was interrupted by the cloud"
        )

    def __reduce__(self):  # keep it picklable across Dask / process boundaries
        return (type(self), (self.instance_id, self.offer_key, str(self)))


class MissingExtraError(CloudSchedError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class MoveRequested(CloudSchedError):
    """The spot controller asked a task to stop and move; its checkpoint is already saved.

    Raised by ``checkpoint.save()`` after saving, when ``checkpoint.request_move(key)`` was
    called. The runner treats it as "re-place and retry from the checkpoint", not a failure.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"checkpoint {key}: move requested ({reason}); state saved")

    def __reduce__(self):  # picklable across Dask / process boundaries
        return (type(self), (self.key, self.reason))


class InputError(CloudSchedError, ValueError):
    """Bad user input (a file, a column, an option). The CLI prints it and exits 2."""


@contextmanager
def read_errors(what: str, name: str, path: str, *, save_as: str = "UTF-8") -> Iterator[None]:
    """Reading a user's text file: a decode or OS error becomes one :class:`InputError` line.

    One wording for every file we read (``what`` names the flag or the file's role), so a
    user sees which byte or which OS error, and the fix, never a decoder traceback.
    """
    try:
        yield
    except UnicodeDecodeError as err:
        raise InputError(
            f"{what} {name} is not UTF-8 text (byte {err.start}); save it as {save_as}"
        ) from None
    except OSError as err:
        raise InputError(f"{what} {path} cannot be read ({err.strerror})") from None


class CapacityError(CloudSchedError):
    """The cloud refused to start an offer (stockout, quota, price, throttling).

    The runner blocks that offer for the run and re-places the task on the next best one.
    """

    def __init__(self, offer_key: str, code: str, message: str) -> None:
        self.offer_key = offer_key
        self.code = code
        super().__init__(f"{offer_key}: {code}: {message}")

    def __reduce__(self):
        return (type(self), (self.offer_key, self.code, str(self).split(": ", 2)[-1]))


class ProvisioningError(CloudSchedError):
    """A provisioning setting is wrong (credentials, region, image, subnet); not retried."""


class DeadlineAtRisk(CloudSchedError):
    """A task cannot finish by its deadline even on-demand (``on_deadline_risk="fail"``)."""


class BudgetExceeded(CloudSchedError):
    """A hard budget cap refused a placement, or stopped it while it ran; the task fails
    with this one-line message."""

    def __init__(self, task_name: str, overrun: _Overrun) -> None:
        self.task_name = task_name
        self.overrun = overrun
        verb = "stopped while running" if getattr(overrun, "running", False) else "refused"
        super().__init__(
            f"{task_name}: {verb}, {overrun.describe()}; raise {overrun.cap} in the "
            "CloudSchedPolicy block or set budget_enforcement=soft"
        )

    def __reduce__(self):  # picklable across process boundaries, like the other errors
        return (type(self), (self.task_name, self.overrun))


class MissingBlockError(CloudSchedError, ValueError):
    """A block the runner or CLI was told to load is not saved on the Prefect API."""
