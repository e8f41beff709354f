"""`fogwheel price`, `earnings --statement`, `keys credit-limit`, and `--max-cost` on jobs.

What things cost, before and after: the current price (`GET /v1/price`), what each job was
charged and how much of it paid for checks (the `jobs` table), a cap on what a job may cost
(`--max-cost`: refused when its limits let it cost more, stopped when its charges reach it), a
customer's credit limit (the operator's), and an owner's statement: earnings per day and job,
and payouts so far. README "What it costs" tells the whole story.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from fogwheel.cli import CoordinatorOpt, _api_call, _fail, out
from fogwheel.core.ledger import format_credits

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer instead.")]


def max_cost_option() -> float | None:
    """The running command's --max-cost, if it has one (read from its Click context, so that
    `_client` applies it to every job the command submits)."""
    try:  # Typer carries its own Click, whose context is not public API
        from typer._click.globals import get_current_context
    except ImportError:
        return None
    ctx = get_current_context(silent=True)
    if ctx is None:
        return None
    value = ctx.params.get("max_cost")
    return float(value) if isinstance(value, int | float) else None


def credits(micro: int | None) -> str:
    """`1234567` → `1.234567` (the table's unit is a credit)."""
    return "-" if micro is None else format_credits(micro).removesuffix(" credits")


def job_cost_cells(j: dict[str, Any]) -> tuple[str, str]:
    """The `cost` and `checks` cells of a job's row: credits charged so far (of its cap), and
    the runs that checked another's result with what they cost."""
    cost = credits(j.get("cost", 0))
    if j.get("max_cost") is not None:
        cost += f" of {credits(j['max_cost'])}"
    n = j.get("checks", 0)
    checks = "0" if not n else f"{n} ({credits(j.get('checks_cost', 0))})"
    return cost, checks


def job_cost_line(j: dict[str, Any]) -> str:
    """One sentence under `fogwheel jobs ID`: charged, checks, the cap and why it stopped."""
    line = f"charged {format_credits(j.get('cost', 0))}"
    n = j.get("checks", 0)
    if n:
        line += f", of which {format_credits(j.get('checks_cost', 0))} for {n} check run(s)"
    if j.get("max_cost") is not None:
        line += f"; max cost {format_credits(j['max_cost'])}"
    if j.get("cancel_reason"):
        line += f"; stopped: {j['cancel_reason']}"
    return line


def price(coordinator: CoordinatorOpt = None, as_json: JsonOpt = False) -> None:
    """Show the current price: a CPU-second (and hour) of verified work, a GB served by the
    CDN, the platform's fee, and who pays for checks.

    A job costs its verified runs' CPU-seconds at this price; `--max-cost` caps it.
    """
    if not coordinator:
        raise _fail("no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR")
    data = _public_get(coordinator, "/v1/price")
    if as_json:
        print(json.dumps(data), flush=True)
        return
    table = Table(title="price")
    table.add_column("what")
    table.add_column("credits", justify="right")
    table.add_row("a CPU-second of verified work", credits(data["per_cpu_second"]))
    table.add_row("a CPU-hour", credits(data["per_cpu_hour"]))
    table.add_row("a GB served by the CDN", credits(data["per_gb_served"]))
    table.add_row("the least a run costs", credits(data["min_charge"]))
    table.add_row("platform fee (of every charge)", f"{data['fee_bps'] / 100:g} %")
    out.print(table)
    out.print(f"checks: {data['checks']}", markup=False, highlight=False, soft_wrap=True)


def _public_get(url: str, path: str) -> dict[str, Any]:
    """GET a route that needs no credential, from the first coordinator that answers."""
    return _api_call("GET", url, None, path, {})


def print_statement(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data), flush=True)
        return
    who = f"owner {data['owner_id']}" if data.get("owner_id") else f"device {data.get('node_id')}"
    out.print(
        f"{who}: earned {format_credits(data['earned'])}, paid out "
        f"{format_credits(data['paid_out'])}, balance {format_credits(data['balance'])}",
        markup=False,
        highlight=False,
    )
    if not data["lines"]:
        out.print("no earnings yet")
    else:
        table = Table(title="statement (UTC days, newest first)")
        for col in ("day", "from", "entries", "credits"):
            table.add_column(col, justify="right" if col in ("entries", "credits") else "left")
        for line in data["lines"]:
            table.add_row(
                line["day"], line["source"], str(line["entries"]), credits(line["earned"])
            )
        out.print(table)
    if not data["payouts"]:
        out.print(
            "payouts: none yet (paying out is not built: earnings accrue on the balance)",
            markup=False,
            highlight=False,
        )


def statement(url: str, credential: str, path: str, as_json: bool) -> None:
    """`fogwheel earnings --statement`: GET one statement and print it."""
    print_statement(_api_call("GET", url, credential, path, {}), as_json)


def keys_credit_limit(
    customer_id: Annotated[str, typer.Argument(help="The customer's id (`keys create` printed).")],
    limit: Annotated[float, typer.Argument(min=0, help="Credits its balance may go below zero.")],
    coordinator: CoordinatorOpt = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            "--admin-key",
            envvar="FOGWHEEL_ADMIN_KEY",
            help="The operator key that `fogwheel coordinator` printed.",
        ),
    ] = None,
) -> None:
    """Operator: set how far below zero a customer's balance may go; past it, its new jobs
    are refused (HTTP 402) with a sentence that says so."""
    if not coordinator:
        raise _fail("no coordinator: pass --coordinator URL or set FOGWHEEL_COORDINATOR")
    if not admin_key:
        raise _fail("no admin key: pass --admin-key or set FOGWHEEL_ADMIN_KEY")
    data = _api_call(
        "PUT",
        coordinator,
        admin_key,
        f"/v1/customers/{customer_id}/credit-limit",
        {"credits": limit},
    )
    out.print(
        f"customer {data['customer_id']}: credit limit {data['credit_limit_text']}",
        markup=False,
        highlight=False,
    )


def register(app: typer.Typer, keys_app: typer.Typer) -> None:
    """Add these commands to the `fogwheel` app."""
    app.command("price")(price)
    keys_app.command("credit-limit")(keys_credit_limit)
