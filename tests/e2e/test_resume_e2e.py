"""Runs that lose their machine and finish anyway, end to end over the real sshd and the fake Vast: an interruptible
instance taken at a random step continues on another offer from the last pulled state, and `gpurun resume` continues
a run whose machine was destroyed while its client was gone. Both end on the weights of an uninterrupted run of the
same job (run again on the box image's Python) and leave no machine behind."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.boxes import Box
from tests.support.e2e import FAST, json_documents, messages, run_dir, start_train, wait_until
from tests.support.env import subprocess_env
from tests.support.straight import max_difference, straight_run

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.sshd]

#: 8 epochs of 5 steps, a checkpoint (and a state) every epoch
EPOCHS, STEPS = 8, 40
#: the provider is asked every second whether it still runs the machine
CHECK = {"GPURUN_MACHINE_CHECK_S": "1"}


def _state_pulled(tmp_path: Path) -> Any:
    """Whether the client has pulled a training state yet: a preemption before that restarts from step 0 (a path
    of its own), so the preemption tests take the machine only once there is a state to continue from."""
    return lambda: any((tmp_path / "runs").glob("*/state/progress.json"))


def events_of(out: Path, kind: str) -> list[dict[str, Any]]:
    lines = (out / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def assert_same_weights_as_a_straight_run(out: Path, box: Box, tmp_path: Path) -> None:
    """The fetched LoRA and the last pulled state equal an uninterrupted run's of the job the box ran last."""
    (folder,) = [p for p in box.remains.iterdir() if p.is_dir()]
    reference = straight_run(folder, box, tmp_path / "straight")
    assert max_difference(out / "state" / "lora.safetensors", reference / "state" / "lora.safetensors") < 1e-5
    assert max_difference(out / "lora.safetensors", reference / "lora.safetensors") < 1e-3  # fp16 file


def test_a_preempted_spot_run_continues_on_another_offer_and_ends_on_the_same_weights(
    vast_on_box: Any, warm_box: Box, tmp_path: Path
) -> None:
    """Vast outbids the instance at a random step: stopped at once, its processes killed, its disk kept."""
    seed = time.time_ns()
    step = random.Random(seed).randint(8, STEPS - 8)
    vast_on_box.preempt_at_step(step, ready=_state_pulled(tmp_path))
    with start_train(tmp_path, EPOCHS, "--spot", "--budget", "5", env=CHECK) as proc:
        stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, f"seed {seed}, step {step}\n" + stdout[-3000:] + stderr[-3000:]
    out = run_dir(tmp_path)

    # the outbid instance was destroyed, a new one rented from another offer, and nothing is left
    first, second = vast_on_box.instances.values()
    assert vast_on_box.preempted == [first.id] and first.id != second.id
    assert first.offer["id"] != second.offer["id"] and second.is_bid
    assert vast_on_box.live_instances() == [] and set(vast_on_box.destroyed_ids) == {first.id, second.id}
    assert any("the provider took machine" in m for m in messages(stdout))
    lost = assert_resumed_to_the_same_weights(out, warm_box, tmp_path, [first.id, second.id], f"seed {seed}")
    assert 0 < lost["resumed_from"] < STEPS
    print(f"seed {seed}: preempted at step {step}, resumed from {lost['resumed_from']}, "
          f"{lost['minutes_lost']:.2f} min lost (${lost['lost_usd']:.5f})")  # fmt: skip


def test_an_interrupted_runpod_spot_pod_continues_on_another_pod(
    runpod_on_box: Any, warm_box: Box, tmp_path: Path
) -> None:
    """RunPod takes a spot pod with a 5-second warning (SIGTERM: the runner saves a state, which gpurun may pull
    before the SIGKILL), then EXITED."""
    step = random.Random(time.time_ns()).randint(8, STEPS - 8)
    runpod_on_box.interrupt_at_step(step, ready=_state_pulled(tmp_path))
    with start_train(tmp_path, EPOCHS, "--spot", "--budget", "5", env=CHECK, provider="runpod") as proc:
        stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, f"step {step}\n" + stdout[-3000:] + stderr[-3000:]
    first, second = runpod_on_box.pods.values()
    assert runpod_on_box.interrupted == [first.id] and second.interruptible
    assert runpod_on_box.live_pods() == [] and set(runpod_on_box.destroyed_ids) == {first.id, second.id}
    lost = assert_resumed_to_the_same_weights(run_dir(tmp_path), warm_box, tmp_path, [first.id, second.id],
                                              f"step {step}")  # fmt: skip
    print(f"runpod: interrupted at step {step}, resumed from {lost['resumed_from']}, "
          f"{lost['minutes_lost']:.2f} min lost")  # fmt: skip


def assert_resumed_to_the_same_weights(
    out: Path, box: Box, tmp_path: Path, machines: list[str], why: str
) -> dict[str, Any]:
    """The second runner resumed from the last state pulled from the first and trained to the end, on the weights
    of an uninterrupted run; the receipt lists both machines and prices the interruption. Returns it."""
    starts = events_of(out, "start")
    assert len(starts) == 2 and starts[1]["resumed_from_step"] > 0, why
    assert events_of(out, "done")[-1]["steps"] == STEPS
    assert_same_weights_as_a_straight_run(out, box, tmp_path)
    receipt = json.loads((out / "receipt.json").read_text())
    assert receipt["outcome"] == "done" and receipt["destroyed"] is True
    assert [m["instance_id"] for m in receipt["machines"]] == machines
    assert [m["ended"] for m in receipt["machines"]] == ["preempted", "done"]
    (lost,) = receipt["interruptions"]
    assert lost["instance_id"] == machines[0] and lost["minutes_lost"] > 0 and lost["lost_usd"] > 0
    assert receipt["actual_total_usd"] == pytest.approx(sum(m["usd"] for m in receipt["machines"]), rel=0.05)
    return {**lost, "resumed_from": starts[1]["resumed_from_step"]}


def test_resume_continues_a_run_whose_machine_was_destroyed_while_its_client_was_gone(
    vast_on_box: Any, warm_box: Box, tmp_path: Path
) -> None:
    with start_train(tmp_path, EPOCHS, "--budget", "5", env=CHECK) as proc:
        out = wait_until(lambda: next(iter((tmp_path / "runs").glob("*/state/progress.json")), None), 300,
                         "a pulled state").parent.parent  # fmt: skip
        proc.send_signal(signal.SIGKILL)  # the laptop goes away: no teardown
        proc.communicate(timeout=30)
    (instance,) = vast_on_box.live_instances()
    vast_on_box.take_away(instance)  # the host fails: the instance is gone with its disk
    run_id = out.name

    resumed = subprocess.run(
        [sys.executable, "-m", "gpurun", "resume", run_id, "--yes", "--json"],
        capture_output=True, text=True, timeout=400, env=subprocess_env(**{**FAST, **CHECK}),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert len(vast_on_box.instances) == 2 and vast_on_box.live_instances() == []
    starts = events_of(out, "start")
    assert starts[-1]["resumed_from_step"] > 0 and events_of(out, "done")[-1]["steps"] == STEPS
    assert_same_weights_as_a_straight_run(out, warm_box, tmp_path)
    receipt = json.loads((out / "receipt.json").read_text())
    assert receipt["outcome"] == "done" and receipt["run_id"] == run_id and len(receipt["machines"]) == 2
    # `gpurun runs` no longer offers it for resuming
    listed = subprocess.run([sys.executable, "-m", "gpurun", "runs", "--json"], capture_output=True, text=True,
                            timeout=60, env=subprocess_env())  # fmt: skip
    (row,) = json_documents(listed.stdout)[0]["runs"]
    assert row["state"] == "done" and row["resumable"] is False
