"""What a user reads when something is wrong: the real `fogwheel` command against a real local
coordinator and node, each message naming the option or the action that fixes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fogwheel.client import Client
from fogwheel.errors import NameTaken
from fogwheel.localfog import LocalFog
from fogwheel.store import Store
from tests.test_kmer import jellyfish_dump, jellyfish_or_skip, random_genome

PYDANTIC_WORDS = ("String should", "Input should", "pattern", "Field required", "validation")


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(1, workdir=tmp_path_factory.mktemp("fog"), lease_seconds=10.0) as f:
        yield f


def fogwheel(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, with no FOGWHEEL_ settings of this shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGWHEEL_")}
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def as_admin(fog: LocalFog, *args: str) -> subprocess.CompletedProcess[str]:
    return fogwheel(*args, "-c", fog.url, "--admin-key", fog.admin_key)


def as_customer(fog: LocalFog, *args: str) -> subprocess.CompletedProcess[str]:
    return fogwheel(*args, "-c", fog.url, "--api-key", fog.api_key)


def failed(res: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a command that failed."""
    assert res.returncode != 0, res.stdout
    assert res.stderr.startswith("error: "), res.stderr
    return res.stderr


# -- keys: the right flag for the key the endpoint takes -----------------------------------


def test_a_wrong_admin_key_points_to_admin_key(fog: LocalFog) -> None:
    said = failed(fogwheel("keys", "create", "--name", "x", "-c", fog.url, "--admin-key", "wrong"))
    assert "--admin-key / FOGWHEEL_ADMIN_KEY" in said and "--api-key" not in said
    said = failed(fogwheel("nodes", "pardon", "n-1", "-c", fog.url, "--admin-key", "wrong"))
    assert "--admin-key / FOGWHEEL_ADMIN_KEY" in said and "--api-key" not in said


def test_a_wrong_api_key_points_to_api_key(fog: LocalFog) -> None:
    said = failed(fogwheel("jobs", "-c", fog.url, "--api-key", "wrong"))
    assert "--api-key / FOGWHEEL_API_KEY" in said and "(HTTP 401)" in said


def test_a_customer_key_where_the_admin_key_is_needed_says_which_is_which(fog: LocalFog) -> None:
    said = failed(
        fogwheel("keys", "create", "--name", "y", "-c", fog.url, "--admin-key", fog.api_key)
    )
    assert "the admin key (--admin-key / FOGWHEEL_ADMIN_KEY)" in said
    assert "the key given is a customer API key" in said


def test_a_revoked_key_is_called_revoked_and_points_to_its_flag(fog: LocalFog) -> None:
    made = as_admin(fog, "keys", "create", "--name", "soon-gone", "--json")
    assert made.returncode == 0, made.stderr
    customer = json.loads(made.stdout)
    assert fogwheel("jobs", "-c", fog.url, "--api-key", customer["api_key"]).returncode == 0
    gone = as_admin(fog, "keys", "revoke", customer["customer_id"])
    assert gone.returncode == 0, gone.stderr
    said = failed(fogwheel("jobs", "-c", fog.url, "--api-key", customer["api_key"]))
    assert "revoked" in said and "--api-key / FOGWHEEL_API_KEY" in said


def test_a_refused_node_credential_points_to_the_node_json(fog: LocalFog, tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(json.dumps({"coordinator": fog.url, "credential": "x"}))
    said = failed(fogwheel("earnings", "--data-dir", str(tmp_path)))
    assert "node.json in the node's --data-dir" in said and "--api-key" not in said


# -- the coordinator: missing, or given with a path ----------------------------------------


def test_a_missing_coordinator_is_asked_for_in_the_clis_words() -> None:
    said = failed(fogwheel("jobs"))
    assert "pass --coordinator URL or set FOGWHEEL_COORDINATOR" in said
    assert "url=" not in said and "--local" not in said  # jobs has no --local
    said = failed(fogwheel("run", "--", "true"))
    assert "--coordinator URL or set FOGWHEEL_COORDINATOR" in said and "--local N" in said


def test_a_url_ending_in_v1_is_taken_as_the_base(fog: LocalFog) -> None:
    for url in (fog.url + "/v1", fog.url + "/v1/", fog.url + "/"):
        res = fogwheel("jobs", "-c", url, "--api-key", fog.api_key)
        assert res.returncode == 0, res.stderr


def test_the_sdk_takes_a_url_ending_in_v1_as_the_base(fog: LocalFog) -> None:
    with Client(fog.url + "/v1/", fog.api_key) as client:
        assert client.url == fog.url
        assert isinstance(client.jobs(5), list)


def test_a_url_with_another_path_says_the_url_is_the_base(fog: LocalFog) -> None:
    said = failed(fogwheel("jobs", "-c", fog.url + "/api", "--api-key", fog.api_key))
    assert "the coordinator URL is the base" in said and "without /v1" in said
    assert "Not Found (HTTP" not in said


def test_a_url_that_is_no_url_is_refused_with_its_form(fog: LocalFog) -> None:
    res = fogwheel("jobs", "-c", "127.0.0.1:8470", "--api-key", fog.api_key)
    assert res.returncode == 2 and "http://HOST:PORT" in res.stderr


# -- what the coordinator validates, in sentences ------------------------------------------


def test_a_malformed_content_id_is_a_sentence_not_a_regex(fog: LocalFog, tmp_path: Path) -> None:
    said = failed(as_customer(fog, "cdn", "get", "not-an-id", "--out", str(tmp_path / "f")))
    assert "the content id is not in the right form" in said and "24 hex digits" in said
    assert not any(words in said for words in PYDANTIC_WORDS), said


def test_a_name_too_long_says_how_long_it_may_be(fog: LocalFog) -> None:
    said = failed(as_admin(fog, "keys", "create", "--name", "x" * 300))
    assert "the name is too long: at most 200 characters" in said
    assert not any(words in said for words in PYDANTIC_WORDS), said


# -- customers: one name, one customer -------------------------------------------------------


def test_a_second_customer_of_one_name_is_refused_with_409(fog: LocalFog) -> None:
    first = as_admin(fog, "keys", "create", "--name", "acme")
    assert first.returncode == 0, first.stderr
    said = failed(as_admin(fog, "keys", "create", "--name", "acme"))
    assert "a customer named 'acme' exists already" in said and "pick another name" in said
    assert "(HTTP 409)" in said
    r = httpx.post(
        f"{fog.url}/v1/customers",
        params={"name": "acme"},
        headers={"authorization": f"Bearer {fog.admin_key}"},
    )
    assert r.status_code == 409 and "exists already" in r.json()["error"]


def test_the_store_refuses_a_taken_name_and_frees_it_on_revocation(store: Store) -> None:
    cid, _ = store.create_customer("acme", 1.0)
    with pytest.raises(NameTaken, match="pick another name"):
        store.create_customer("acme", 2.0)
    store.create_customer("acme-2", 2.0)
    assert store.revoke_customer(cid)
    store.create_customer("acme", 3.0)  # a revoked customer's name is free again


# -- tasks: where they went, and what failed where -----------------------------------------


def double(x: int) -> int:
    return 2 * x


def raise_here(x: int) -> int:
    raise ValueError(f"bad input {x}")


RAISE_LINE = raise_here.__code__.co_firstlineno + 1


def import_missing() -> None:
    import fogwheel_no_such_module  # type: ignore[import-not-found]  # noqa: F401


def test_jobs_id_shows_the_task_ids_its_reasons_name(fog: LocalFog) -> None:
    with Client(fog.url, fog.api_key, replicas=1) as client:
        futures = client.submit_many(double, [((x,), {}) for x in (1, 2, 3)])
        assert [f.result(120) for f in futures] == [2, 4, 6]
        job_id = futures[0].job_id
        task_ids = [t["id"] for t in client.tasks(job_id)]
    res = fogwheel("jobs", str(job_id), "-c", fog.url, "--api-key", fog.api_key)
    assert res.returncode == 0, res.stderr
    assert "task id" in res.stdout
    for task_id in task_ids:
        assert f" {task_id} " in res.stdout, res.stdout


def test_a_remote_traceback_names_the_users_file_and_line(fog: LocalFog) -> None:
    with (
        Client(fog.url, fog.api_key, replicas=1) as client,
        pytest.raises(ValueError, match="bad input 7") as raised,
    ):
        client.submit(raise_here, 7).result(120)
    tb = str(raised.value.__cause__)
    assert "<dynamic-code>" not in tb
    assert f'test_cli_messages.py", line {RAISE_LINE}, in raise_here' in tb, tb


def test_a_module_missing_on_the_node_says_how_to_get_it_there(fog: LocalFog) -> None:
    with (
        Client(fog.url, fog.api_key, replicas=1) as client,
        pytest.raises(ModuleNotFoundError) as raised,
    ):
        client.submit(import_missing).result(120)
    said = str(raised.value)
    assert "No module named 'fogwheel_no_such_module'" in said
    assert "the module fogwheel_no_such_module is not installed on the node" in said
    assert "install it there, or send the code with your function" in said


# -- kmer -k is the k-mer length -------------------------------------------------------------


def test_kmer_k_5_equals_jellyfish_at_k_5(fog: LocalFog, tmp_path: Path) -> None:
    jellyfish = jellyfish_or_skip()
    genome = tmp_path / "genome.fa"
    genome.write_text(random_genome(seed=11, records=2, length=20_000))
    res = fogwheel(
        "kmer", str(genome), "-k", "5", "--out", "k5.tsv", "--replicas", "1",
        "-c", fog.url, "--api-key", fog.api_key, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "k=5" in res.stdout, res.stdout
    assert (tmp_path / "k5.tsv").read_text() == jellyfish_dump(jellyfish, genome, 5)
    again = fogwheel(
        "kmer", str(genome), "--kmer-length", "5", "--out", "again.tsv", "--replicas", "1",
        "-c", fog.url, "--api-key", fog.api_key, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.tsv").read_text() == (tmp_path / "k5.tsv").read_text()


# -- what the user wrote is printed as written ------------------------------------------------


def test_a_path_with_brackets_is_printed_whole(fog: LocalFog, tmp_path: Path) -> None:
    out_dir = tmp_path / "run[ml]"  # what Rich would take for a tag
    res = fogwheel(
        "run", "-c", fog.url, "--api-key", fog.api_key, "--replicas", "1",
        "-o", "out.txt", "--out-dir", str(out_dir), "--", "sh", "-c", "echo hi > out.txt",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"saved {out_dir / 'out.txt'}" in res.stderr, res.stderr
    assert (out_dir / "out.txt").read_text() == "hi\n"


def test_customers_made_at_once_under_one_name_are_one(store: Store) -> None:
    """Two coordinator processes (threads here, each its own connection) asking at once."""
    from concurrent.futures import ThreadPoolExecutor

    def make(i: int) -> str:
        try:
            return store.create_customer("rush", float(i))[0]
        except NameTaken:
            return "taken"

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(make, range(8)))
    assert made.count("taken") == 7, made
