"""A third of the fleet lies: no wrong result reaches the customer, the liars are caught
and unpaid, and the books balance."""

from __future__ import annotations

import httpx

from fogwheel import Client
from fogwheel.localfog import LocalFog


def cube(x: int) -> int:
    """Deterministic, with enough CPU (a few ms) that honest nodes earn something."""
    busy = sum(k * k for k in range(30_000))
    return x * x * x + busy - busy


def test_a_third_of_the_nodes_returning_wrong_results_changes_no_answer(tmp_path) -> None:
    with LocalFog(0, lease_seconds=5.0, workdir=tmp_path) as fog:
        honest = [fog.add_node() for _ in range(4)]
        faulty = [fog.add_node(env={"FOGWHEEL_FAULT": "wrong-results"}) for _ in range(2)]
        fog.wait_for_nodes(6)
        with Client(fog.url, fog.api_key) as client:
            futures = client.submit_many(cube, [((i,), {}) for i in range(240)])
            answers = [f.result(timeout=240) for f in futures]
            nodes = {n["name"]: n for n in client.nodes()}
        assert answers == [i**3 for i in range(240)]  # zero wrong results accepted

        faulty_names = {f"local-{i}" for i in faulty}
        assert {n for n, v in nodes.items() if v["state"] == "quarantined"} == faulty_names
        assert all(nodes[f"local-{i}"]["agreed"] > 0 for i in honest)

        admin = {"authorization": f"Bearer {fog.admin_key}"}
        books = httpx.get(f"{fog.url}/v1/ledger", headers=admin, timeout=10).json()
        balances = books["accounts"]
        assert books["total"] == 0 and sum(balances.values()) == 0 and books["balanced"]
        for name in faulty_names:
            assert balances.get(f"node:{nodes[name]['id']}", 0) <= 0  # nothing for disputed work
        for i in honest:
            assert balances[f"node:{nodes[f'local-{i}']['id']}"] > 0
