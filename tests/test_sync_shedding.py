"""Admission control: an overloaded coordinator answers syncs that only ask for work at once.

A sync that queued for a worker thread longer than FOGWHEEL_SHED_AFTER_S is overload: if it
only asks for work, it gets none and an idle node's wait, so that it adds nothing to the queue;
a sync that carries results or renewals always goes through. Here the threshold is -1 s, so
every sync counts as one that queued too long: real coordinator processes, the real protocol.
"""

from __future__ import annotations

import pytest

from fogwheel.localfog import LocalFog
from tests.adversarial.hostile import HostileNode


def _submit(fog: LocalFog, n: int) -> None:
    import httpx

    body = {"kind": "command", "tasks": [{"command": ["true"]} for _ in range(n)]}
    r = httpx.post(f"{fog.url}/v1/jobs", json=body, headers=fog.headers, timeout=30)
    assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize("shed", [True, False], ids=["overloaded", "normal"])
def test_a_sync_that_only_asks_is_shed_under_overload_and_one_that_renews_is_not(
    tmp_path, monkeypatch: pytest.MonkeyPatch, shed: bool
) -> None:
    monkeypatch.setenv("FOGWHEEL_SHED_AFTER_S", "-1" if shed else "30")
    with LocalFog(0, workdir=tmp_path / "fog") as fog:
        _submit(fog, 4)
        with HostileNode(fog.url, fog.join_string) as node:
            assert node.join().status_code == 201
            asked = node.sync(want=2, slots_free=1)
            assert asked.status_code == 200
            answer = asked.json()
            if shed:
                assert answer["tasks"] == []
                assert answer["next_sync_s"] >= 0.5  # sent away for an idle node's wait
            else:
                assert len(answer["tasks"]) >= 1
            # A sync that renews is never shed (the lease it renews would run out): it is
            # answered in full, with the unknown task it named as lost, and (overloaded: the
            # node holds nothing yet) the lease it asked for.
            renewing = node.sync(renew=[999_999], want=1, slots_free=1)
            assert renewing.status_code == 200
            assert renewing.json()["lost"] == [999_999]
            if shed:
                assert len(renewing.json()["tasks"]) == 1
            scraped = node.http.get(
                "/metrics", headers={"authorization": f"Bearer {fog.admin_key}"}
            ).text
            assert f"fogwheel_syncs_shed_total {1.0 if shed else 0.0}" in scraped
