"""DiLoCo on real local fogs: training lowers the validation loss, survives a node killed
mid-round, resumes after the driver is killed to the same weights round for round, and
rejects corrupt pseudo-gradients. A tiny model, so that each test takes seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("FOGWHEEL_REQUIRE_TORCH") != "1":
    pytest.importorskip("torch", reason="training needs the [ml] extra (PyTorch)")

from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.workloads import diloco, transformer

TINY = transformer.ModelConfig.tiny().to_dict()


def settings(**kw: object) -> diloco.TrainConfig:
    base: dict[str, object] = {
        "model": TINY,
        "workers": 2,
        "rounds": 4,
        "inner_steps": 10,
        "inner_lr": 3e-3,
        "round_timeout": 60.0,
        "seed": 3,
    }
    return diloco.TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_two_workers_lower_the_validation_loss_and_keep_their_optimizer(tmp_path: Path) -> None:
    with LocalFog(2, workdir=tmp_path / "fog") as fog, Client(fog.url, fog.api_key) as client:
        trainer = diloco.Trainer.start(client, settings(), tmp_path / "run")
        run = trainer.train()
        report = trainer.write_report()
    initial = trainer.initial_val
    assert initial is not None and initial > 5.0  # about ln(256): knows nothing
    losses = [h.val_loss for h in run.history]
    assert len(losses) == 4 and losses[-1] < initial - 1.5, (initial, losses)
    assert all(h.reported == 2 and h.rejected == 0 and h.dropped == 0 for h in run.history)
    # the inner AdamW state stayed on the nodes and came back to its worker each round
    assert sum(h.restarted for h in run.history) == 0
    per_round = run.history[0].bytes_up / 2
    assert run.bytes_per_worker == {"w0": per_round * 4, "w1": per_round * 4}
    params = transformer.build(transformer.ModelConfig.tiny()).param_count()
    assert per_round < params * 2 + 4096  # fp16 on the wire, plus a small header
    assert Path(report["csv"]).read_text().count("\n") == 5
    assert report["png"] is None or Path(report["png"]).stat().st_size > 1000


def test_a_node_killed_mid_round_does_not_stop_training(tmp_path: Path) -> None:
    killed: list[int] = []
    with (
        LocalFog(3, lease_seconds=2.0, workdir=tmp_path / "fog") as fog,
        Client(fog.url, fog.api_key) as client,
    ):
        trainer = diloco.Trainer.start(
            client, settings(rounds=3, inner_steps=30, round_timeout=30.0), tmp_path / "run"
        )

        def kill_one_in_round_two(record: diloco.RoundRecord, run: diloco.Run) -> None:
            if record.round != 1:
                return
            # round two starts when this returns: kill a node as soon as it holds a task
            import threading

            def killer() -> None:
                deadline = time.monotonic() + 20
                while not killed and time.monotonic() < deadline:
                    for n in client.nodes():
                        i = int(n["name"].split("-")[1])
                        proc = fog.nodes[i]
                        if n["held"] and proc is not None and proc.poll() is None:
                            fog.kill_node(i, signal.SIGKILL)
                            killed.append(i)
                            return
                    time.sleep(0.05)

            threading.Thread(target=killer, daemon=True).start()

        run = trainer.train(kill_one_in_round_two)
    assert killed
    assert [h.round for h in run.history] == [1, 2, 3]
    assert all(h.reported >= 1 for h in run.history)
    assert run.history[-1].val_loss < trainer.initial_val - 0.5  # type: ignore[operator]


def _train_cli(fog: LocalFog, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fogwheel", "train", "--coordinator", fog.url,
         "--api-key", fog.api_key, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_train_pin_runs_each_worker_on_its_own_device_from_the_cli(tmp_path: Path) -> None:
    # Three devices, two of them pinned (w0, w1) and a third free to take anything: with
    # --pin w every round of worker k is sent by the device advertising w{k}.
    with LocalFog(0, cores_per_node=1, workdir=tmp_path / "fog") as fog:
        fog.add_node()  # a device with no pin: it must take no worker's round
        pinned = [fog.add_node("--capability", f"w{k}") for k in range(2)]
        fog.wait_for_nodes(3)
        with Client(fog.url, fog.api_key) as client:
            ids = {n["name"]: n["id"] for n in client.nodes()}
        args = ["--model", "tiny", "--workers", "2", "--rounds", "3", "--inner-steps", "4",
                "--audit-rate", "0", "--pin", "w", "--run-dir", str(tmp_path / "run")]  # fmt: skip
        proc = _train_cli(fog, *args)
        out, errs = proc.communicate(timeout=300)
        assert proc.returncode == 0, errs
        assert "trained 3 rounds" in out
    ledger = json.loads((tmp_path / "run" / "run.json").read_text())["robust"]["ledger"]
    senders = {(e["round"], e["worker"]): e["node"] for e in ledger}
    assert len(senders) == 6, ledger
    for (_, k), node in senders.items():
        assert node == ids[f"local-{pinned[k]}"], (k, node, ids)


def test_train_pin_refuses_a_prefix_with_spaces() -> None:
    with pytest.raises(ValueError, match="pin must be a capability prefix"):
        settings(pin="w 0")
    with pytest.raises(ValueError, match="pin must be a capability prefix"):
        settings(pin="")


def test_a_run_resumed_after_the_driver_was_killed_gives_the_same_weights(tmp_path: Path) -> None:
    common = ["--model", "tiny", "--workers", "2", "--rounds", "4", "--inner-steps", "8",
              "--inner-lr", "0.003", "--seed", "5"]  # fmt: skip
    with LocalFog(2, workdir=tmp_path / "fog") as fog:
        whole = _train_cli(fog, *common, "--run-dir", str(tmp_path / "whole"))
        out, errs = whole.communicate(timeout=300)
        assert whole.returncode == 0, errs

        first = _train_cli(fog, *common, "--run-dir", str(tmp_path / "cut"))
        manifest = tmp_path / "cut" / "run.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if manifest.exists() and json.loads(manifest.read_text())["round"] >= 2:
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        cut_at = json.loads(manifest.read_text())["round"]
        assert cut_at < 4, "the run finished before it could be killed"

        resumed = _train_cli(fog, "--resume", str(tmp_path / "cut"))
        out, errs = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, errs
        assert "trained 4 rounds" in out
    a = json.loads((tmp_path / "whole" / "run.json").read_text())
    b = json.loads(manifest.read_text())
    assert [h["weights_sha"] for h in a["history"]] == [h["weights_sha"] for h in b["history"]]
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    assert a["weights"] == b["weights"]


def test_corrupt_pseudo_gradients_are_rejected_not_averaged(tmp_path: Path) -> None:
    with LocalFog(0, workdir=tmp_path / "fog") as fog:
        liar = fog.add_node(env={"FOGWHEEL_FAULT": "bad-outputs"})
        fog.wait_for_nodes(1)
        with Client(fog.url, fog.api_key) as client:
            trainer = diloco.Trainer.start(client, settings(rounds=1), tmp_path / "run")
            run = trainer.train()
            # every pseudo-gradient of the round was garbage: none was averaged in
            [first] = run.history
            assert first.reported == 2 and first.rejected == 2
            assert first.val_loss == trainer.initial_val
            # an honest node takes over; training goes on from the untouched weights
            fog.add_node()
            fog.wait_for_nodes(2)
            fog.kill_node(liar, signal.SIGKILL)
            trainer.cfg.rounds = 3
            run = trainer.train()
    assert [h.rejected for h in run.history[1:]] == [0, 0]
    assert run.history[-1].val_loss < trainer.initial_val - 0.5  # type: ignore[operator]
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("pseudo-gradient rejected") == 2


def test_training_rides_out_a_coordinator_killed_mid_run(tmp_path: Path) -> None:
    """The coordinator is SIGKILLed during round 2 and restarted on the same database: the
    driver's client waits for it, the nodes come back, and every round completes."""
    import threading

    with LocalFog(2, workdir=tmp_path / "fog") as fog, Client(fog.url, fog.api_key) as client:
        trainer = diloco.Trainer.start(client, settings(rounds=3, inner_steps=40), tmp_path / "run")

        def restart_in_round_two(record: diloco.RoundRecord, run: diloco.Run) -> None:
            if record.round == 1:

                def bounce() -> None:
                    time.sleep(0.5)
                    fog.kill_coordinator()
                    time.sleep(1.0)
                    fog.start_coordinator()

                threading.Thread(target=bounce, daemon=True).start()

        first_pid = fog.coordinator.pid if fog.coordinator else None
        run = trainer.train(restart_in_round_two)
        assert fog.coordinator is not None and fog.coordinator.pid != first_pid  # bounced
    assert [h.round for h in run.history] == [1, 2, 3]
    assert all(h.reported >= 1 for h in run.history)
    assert run.history[-1].val_loss < trainer.initial_val - 0.5  # type: ignore[operator]
