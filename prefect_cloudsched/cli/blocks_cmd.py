"""``prefect-cloudsched blocks apply``: save block documents (``blocks/*.yaml``) to Prefect.

A document names a block type, a block name and its values::

    type: cloudsched-policy      # cloudsched-policy | aws-compute-pool | gcp-compute-pool
    name: dev                    #   | cloudsched-ledger
    values:
      budget_per_run_usd: 5
      aws_secret_access_key: ${AWS_SECRET_ACCESS_KEY:-testing}

``${VAR}`` and ``${VAR:-default}`` in string values are read from the environment, so real
secrets stay out of the files. Applying is idempotent: a block whose saved values already
equal the document's is left alone, and one that differs is only replaced with
``--overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import (
    FormatOption,
    JsonOption,
    OutputFormat,
    hide_password,
    render_rows,
    resolve_format,
)
from prefect_cloudsched.errors import InputError

blocks_app = typer.Typer(
    rich_markup_mode="markdown",
    help="""Prefect blocks: save the ready documents in blocks/.

Examples:

* `prefect-cloudsched blocks apply`
* `prefect-cloudsched blocks apply --dir my-blocks --overwrite`
""",
)
app.add_typer(blocks_app, name="blocks")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class BlockDocument:
    """One parsed document: which block, under which name, with which values."""

    path: Path
    slug: str
    name: str
    values: dict[str, Any]

    @property
    def ref(self) -> str:
        """``slug/name``, as ``Block.load`` accepts it."""
        return f"{self.slug}/{self.name}"


def _block_classes() -> dict[str, type]:
    from prefect_cloudsched.prefect.blocks import (
        AwsComputePool,
        CloudSchedExecutor,
        CloudSchedLedger,
        CloudSchedPolicy,
        GcpComputePool,
    )

    classes = (
        CloudSchedPolicy,
        AwsComputePool,
        GcpComputePool,
        CloudSchedLedger,
        CloudSchedExecutor,
    )
    return {cls.get_block_type_slug(): cls for cls in classes}


def _defaults() -> dict[str, str]:
    """Variables the package itself defines default to the package's own defaults."""
    from prefect_cloudsched.adapters.ledger import default_home

    return {"PREFECT_CLOUDSCHED_HOME": str(default_home())}


def substitute(value: Any, where: str, env: dict[str, str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string inside ``value``."""
    if isinstance(value, dict):
        return {k: substitute(v, f"{where}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, where, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise InputError(f"{where} uses ${{{name}}}, which is not set; export it or edit the file")

    return _VAR.sub(replace, value)


def read_documents(directory: Path) -> list[BlockDocument]:
    """Parse every ``*.yaml``/``*.yml``/``*.json`` document in ``directory``, sorted by file."""
    import yaml

    if not directory.is_dir():
        raise InputError(f"--dir {directory} is not a folder; point it at the blocks/ folder")
    files = sorted(p for p in directory.iterdir() if p.suffix in _SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{directory} has no .yaml, .yml or .json block documents")
    classes = _block_classes()
    env = {**_defaults(), **os.environ}
    documents: list[BlockDocument] = []
    seen: dict[str, Path] = {}
    for path in files:
        try:
            text = path.read_text()
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"{path}: cannot be read as a block document: {first}") from None
        if not isinstance(raw, dict) or set(raw) - {"type", "name", "values"}:
            raise InputError(f"{path}: expected the keys type, name and values (only)")
        slug, name, values = raw.get("type"), raw.get("name"), raw.get("values") or {}
        if slug not in classes:
            raise InputError(f"{path}: type {slug!r} is not one of: {', '.join(sorted(classes))}")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            raise InputError(f"{path}: name {name!r} must be lowercase letters, digits and dashes")
        if not isinstance(values, dict):
            raise InputError(f"{path}: values must be a mapping of field: value")
        document = BlockDocument(path, slug, name, substitute(values, f"{path}: values", env))
        if document.ref in seen:
            raise InputError(f"{path}: {document.ref} is also defined in {seen[document.ref]}")
        seen[document.ref] = path
        documents.append(document)
    return documents


def build_block(document: BlockDocument) -> Any:
    """The block instance a document describes (pydantic validates every field)."""
    from pydantic import ValidationError

    cls = _block_classes()[document.slug]
    try:
        return cls(**document.values)
    except ValidationError as err:
        problem = err.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "values"
        message = problem["msg"].removeprefix("Value error, ")
        raise InputError(f"{document.path}: {field}: {message}") from None


def _fields(block: Any) -> dict[str, Any]:
    """Declared field values (``SecretStr`` compares its secret; load metadata is left out)."""
    return {name: getattr(block, name) for name in type(block).model_fields}


def load_blocks(directory: Path) -> list[tuple[BlockDocument, Any]]:
    """Read and validate every document of a folder (nothing is saved yet)."""
    return [(document, build_block(document)) for document in read_documents(directory)]


def apply_documents(
    blocks: list[tuple[BlockDocument, Any]], *, overwrite: bool
) -> list[tuple[str, str]]:
    """Save each document's block unless the saved one is equal.

    Returns:
        ``(status, "slug/name")`` per document; status is ``created``, ``updated``,
        ``unchanged`` or ``differs`` (kept because ``overwrite`` is off).
    """
    from prefect_cloudsched.prefect.blocks import MissingBlockError

    outcome: list[tuple[str, str]] = []
    for document, block in blocks:
        try:
            saved = type(block).load_named(document.name)
        except MissingBlockError:
            status = "created"
        else:
            if _fields(saved) == _fields(block):
                outcome.append(("unchanged", document.ref))
                continue
            if not overwrite:
                outcome.append(("differs", document.ref))
                continue
            status = "updated"
        block.save(document.name, overwrite=True, _sync=True)
        outcome.append((status, document.ref))
    return outcome


@contextlib.contextmanager
def _prefect_api_errors() -> Iterator[None]:
    """The Prefect API unreachable or refusing: one line naming PREFECT_API_URL and the fix."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    # the effective setting: the environment, or the active Prefect profile
    where = PREFECT_API_URL.value() or "the temporary local server"
    try:
        yield
    except httpx.HTTPStatusError as err:
        raise InputError(
            f"the Prefect API at {hide_password(where)} (PREFECT_API_URL) refused the request "
            f"(HTTP {err.response.status_code}); check PREFECT_API_URL and PREFECT_API_KEY"
        ) from None
    except (httpx.TransportError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"the Prefect API at {hide_password(where)} (PREFECT_API_URL) is unreachable "
            f"({hide_password(first)[:200]}); start it (`prefect server start`) or set "
            "PREFECT_API_URL to a running server"
        ) from None


@blocks_app.command("apply")
def apply(
    directory: Annotated[
        Path, typer.Option("--dir", "-d", help="Folder of block documents (YAML or JSON).")
    ] = Path("blocks"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace saved blocks whose values differ.")
    ] = False,
    output: FormatOption = None,
    as_json: JsonOption = False,
) -> None:
    """Save the block documents in a folder to the Prefect API (idempotent).

    Every document is validated before anything is saved. Exit 1 when a saved block differs
    and `--overwrite` was not given.

    Examples:

    * `prefect-cloudsched blocks apply`
    * `prefect-cloudsched blocks apply --dir my-blocks --overwrite`
    * `PREFECT_API_URL=http://127.0.0.1:4200/api prefect-cloudsched blocks apply --json`
    """
    output = resolve_format(output, as_json)
    blocks = load_blocks(directory)  # every document validated before anything is saved
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo(
            "note: PREFECT_API_URL is not set; Prefect saves through a temporary local server "
            "into $PREFECT_HOME/prefect.db",
            err=True,
        )
    with _prefect_api_errors():
        outcome = apply_documents(blocks, overwrite=overwrite)
    if output is not OutputFormat.TABLE:
        rows = [{"status": status, "block": ref} for status, ref in outcome]
        render_rows(rows, ("status", "block"), output)
        if any(status == "differs" for status, _ in outcome):
            raise typer.Exit(1)
        return
    for status, ref in outcome:
        hint = " (kept: pass --overwrite to replace it)" if status == "differs" else ""
        typer.echo(f"{status:9} {ref}{hint}")
    counts = {s: sum(1 for status, _ in outcome if status == s) for s, _ in outcome}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    if not any(s in counts for s in ("created", "updated")):
        summary += ": nothing to do"
    typer.echo(summary)
    if "differs" in counts:
        raise typer.Exit(1)
