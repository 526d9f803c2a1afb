"""Several processes through `accelerate launch` on CPU (gloo): the run log written once, commands
reaching every rank at the same step, a rank killed with -9, resume on the same and on another
world size; the config keys for DeepSpeed, FSDP and the hosts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from engine.cli.launcher import Failure, launch, root_cause
from engine.config.config import validate
from engine.errors import UserError
from engine.run import checkpoints, control_file
from engine.run.events import dedupe_steps, read_events
from engine.train import dist
from tests.conftest import ROOT, base_config, cli_here
from tests.wait import wait_record

# Its module fixtures train or merge once: under pytest-xdist (`--dist loadgroup`) its tests share a worker.
pytestmark = pytest.mark.xdist_group("dist")

STEPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("dist")

    def config(name: str, **over) -> Path:
        over.setdefault("output_dir", str(root / f"{name}-out"))
        over.setdefault("logs_dir", str(root / "logs"))
        over.setdefault("run_name", name)
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(base_config(tiny_model("qwen3"), max_steps=STEPS, **over)))
        return path

    return config


def wait_job(job, pred, timeout: float = 120) -> dict:
    return wait_record(job.events, pred, timeout, running=job)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.fixture(scope="module")
def controlled(setup):
    """A 2-process DDP run driven through the control file: pause, save + resume, stop."""
    cfg = setup("ctl")
    t0 = time.time()
    job = launch(cfg, 2)
    start = wait_job(job, lambda r: r["kind"] == "start")
    wait_job(job, lambda r: r["kind"] == "step" and r["step"] >= 3)
    job.control("pause")
    paused = wait_job(job, lambda r: r["kind"] == "paused")
    # Both ranks wait together, polling: a command read while paused is agreed at the paused step.
    job.control("save")
    wait_job(job, lambda r: r["kind"] == "control" and r["commands"] == ["save"])
    job.control("resume")
    saved = wait_job(job, lambda r: r["kind"] == "save")
    wait_job(job, lambda r: r["kind"] == "step" and r["step"] >= saved["step"] + 3)
    job.control("stop", reason="test")
    code = job.wait(120)
    return {
        "cfg": cfg,
        "job": job,
        "code": code,
        "start": start,
        "paused": paused,
        "saved": saved,
        "seconds": time.time() - t0,
    }


@pytest.mark.slow
def test_ddp_run_log_written_once_and_controls_reach_both_ranks(controlled):
    job, code = controlled["job"], controlled["code"]
    assert code == 0, job.log_path.read_text()[-3000:]
    raw = job.events.read_bytes()
    assert raw.endswith(b"\n")
    records = read_events(job.events).records
    assert not read_events(job.events).bad_lines
    kinds = [r["kind"] for r in records]
    assert kinds.count("start") == 1 and kinds.count("end") == 1 and kinds.count("train_begin") == 1
    start = controlled["start"]
    assert start["world_size"] == 2 and start["distributed"] == "ddp" and start["global_batch"] == 8
    assert [r["rank"] for r in start["ranks"]] == [0, 1]
    assert len({r["pid"] for r in start["ranks"]}) == 2
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "stopped"
    # one record per step, never two (rank 1 writes nothing)
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, end["step"] + 1))

    # pause, save and stop: each acted on at one step by both ranks
    controls = [r for r in records if r["kind"] == "control"]
    assert [c["commands"] for c in controls] == [["pause"], ["save"], ["resume"], ["stop"]]
    for c in controls:
        assert c["rank_steps"] == [c["step"], c["step"]]
    paused, saved = controlled["paused"], controlled["saved"]
    assert controls[0]["step"] == paused["step"] == saved["step"]
    assert [r["kind"] for r in records if r["kind"] in ("paused", "resumed")] == ["paused", "resumed"]
    saves = [r for r in records if r["kind"] == "save"]
    assert [s["step"] for s in saves] == [saved["step"], end["step"]]  # save-now, then the stop's
    for s in saves:
        folder = Path(s["path"])
        # both ranks wrote their part of the same checkpoint before it was marked complete
        assert (folder / "rng_state_0.pth").exists() and (folder / "rng_state_1.pth").exists()
        meta = json.loads((folder / checkpoints.MARKER).read_text())
        assert meta["world_size"] == 2 and meta["distributed"] == "ddp"


@pytest.mark.slow
def test_resume_same_world_size_and_refuse_another(controlled, setup):
    cfg = controlled["cfg"]
    job = controlled["job"]
    stopped_at = read_events(job.events).records[-1]["step"]
    r = cli_here("train", cfg, "--headless", "--nproc", "2", "--max-steps", stopped_at + 3)
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_events(job.events).records
    resume = [x for x in records if x["kind"] == "resume"][-1]
    assert resume["from_step"] == stopped_at
    assert [x["step"] for x in dedupe_steps(records)] == list(range(1, stopped_at + 4))
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "completed"

    r = cli_here("train", cfg, "--headless", "--max-steps", stopped_at + 5)  # one process
    assert r.returncode == 2
    assert "2 process(es) and this run has 1" in r.stderr and "--allow-world-size-change" in r.stderr
    assert "Traceback" not in r.stderr

    r = cli_here("train", cfg, "--headless", "--max-steps", stopped_at + 5, "--allow-world-size-change")
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_events(job.events).records
    assert any(x["kind"] == "note" and "--allow-world-size-change" in x["message"] for x in records)
    assert records[-1]["status"] == "completed" and records[-1]["step"] == stopped_at + 5
    assert [x for x in records if x["kind"] == "start"][-1]["world_size"] == 1


@pytest.mark.slow
def test_kill_9_of_one_rank_ends_the_job_cleanly(setup, controlled):
    cfg = setup("kill", save_steps=4)
    job = launch(cfg, 2)
    start = wait_job(job, lambda r: r["kind"] == "start")
    wait_job(job, lambda r: r["kind"] == "save" and r["step"] == 4)
    victim = start["ranks"][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    code = job.wait(60)
    took = time.time() - t0
    assert code == 1 and took < 30, took
    for r in start["ranks"]:
        assert not alive(r["pid"]), r
    records = read_events(job.events).records
    alert = next(r for r in records if r.get("rule") == "rank_failed")
    assert alert["rank"] == 1 and alert["exitcode"] == -9 and "SIGKILL" in alert["message"]
    assert [r["kind"] for r in records].count("end") == 1  # rank 0 defers to the launcher
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "failed" and end["rank"] == 1
    assert "rank 1" in end["message"] and str(victim) in end["message"]
    # the checkpoint of the last save is intact and is what a resume picks
    ck = checkpoints.latest(yaml.safe_load(cfg.read_text())["output_dir"])
    assert ck is not None and ck.step >= 4 and ck.meta["world_size"] == 2
    assert end["checkpoint"] == str(ck.path)

    # resume on 2 processes continues that run exactly (same losses as the uninterrupted one)
    r = cli_here("train", cfg, "--headless", "--nproc", "2", "--max-steps", STEPS)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {x["step"]: x["loss"] for x in dedupe_steps(read_events(job.events).records)}
    ref = {x["step"]: x["loss"] for x in dedupe_steps(read_events(controlled["job"].events).records)}
    assert sorted(got) == list(range(1, STEPS + 1))
    common = [s for s in range(ck.step + 1, STEPS + 1) if s in ref and s <= controlled["saved"]["step"] + 3]
    assert common
    for s in common:
        assert got[s] == pytest.approx(ref[s], abs=1e-5), s


@pytest.mark.slow
def test_rank_errors_and_bad_usage_exit_2(setup, tmp_path):
    # deepspeed named but not installed: refused before anything starts
    cfg = setup("ds", deepspeed=str(ROOT / "configs" / "deepspeed" / "zero2.json"))
    r = cli_here("train", cfg, "--headless", "--nproc", "2")
    if not _has("deepspeed"):
        assert r.returncode == 2 and "needs the deepspeed package" in r.stderr and "Traceback" not in r.stderr
    # FSDP on a machine without CUDA: refused with the reason (accelerate would run plain DDP)
    cfg = setup("fsdp", fsdp_version=2, fsdp_config={"offload_params": False})
    r = cli_here("train", cfg, "--headless", "--nproc", "2")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "`fsdp_config` needs CUDA GPUs" in r.stderr and "Traceback" not in r.stderr
    records = read_events(Path(yaml.safe_load(cfg.read_text())["logs_dir"]) / "fsdp" / "events.jsonl").records
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "error"
    assert not any(x.get("rule") == "rank_failed" for x in records)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- config keys (no training) -----------------------------------------------------------------


def _validate(tmp_path, text: str):
    f = tmp_path / "c.yaml"
    data = DEMO_HEAD + text
    f.write_text(data)
    return validate(yaml.safe_load(data), f, data)


DEMO_HEAD = f"base_model: m\ndatasets:\n  - path: {ROOT / 'engine/assets/demo_chat.jsonl'}\n"


def test_deepspeed_presets_parse_and_errors_name_the_file(tmp_path):
    for preset in ("zero2", "zero3", "zero3_offload"):
        path = ROOT / "configs" / "deepspeed" / f"{preset}.json"
        config, _ = _validate(tmp_path, f"deepspeed: {path}\n")
        assert config.deepspeed == str(path)
        assert dist.mode(config) == "deepspeed"
    with pytest.raises(UserError, match=r"c\.yaml:4: `deepspeed`: nothere\.json: no such file"):
        _validate(tmp_path, "deepspeed: nothere.json\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2\n}\n')
    with pytest.raises(UserError, match=r"bad\.json:4:1: not valid JSON"):
        _validate(tmp_path, "deepspeed: bad.json\n")  # relative: the config's folder
    bad.write_text('{"optimizer": {"type": "AdamW"}}')
    with pytest.raises(UserError, match=r"bad\.json: `optimizer` is set in the DeepSpeed JSON"):
        _validate(tmp_path, "deepspeed: bad.json\n")
    with pytest.raises(UserError, match="choose one"):
        _validate(tmp_path, f"deepspeed: {ROOT / 'configs/deepspeed/zero2.json'}\nfsdp_config: {{}}\n")


def test_fsdp_keys_as_axolotl_spells_them(tmp_path):
    from trl import SFTConfig

    config, _ = _validate(
        tmp_path,
        "fsdp_version: 2\nfsdp_config:\n  offload_params: true\n  auto_wrap_policy: transformer_based_wrap\n"
        "  transformer_layer_cls_to_wrap: Qwen3DecoderLayer\n  state_dict_type: SHARDED_STATE_DICT\n"
        "  activation_checkpointing: true\n",
    )
    assert config.gradient_checkpointing is False  # FSDP checkpoints activations itself
    settings = dist.fsdp_settings(config)
    args = SFTConfig(
        output_dir=str(tmp_path / "o"),
        use_cpu=True,
        gradient_checkpointing=False,
        fsdp=True,
        fsdp_config=dict(settings),
    )
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["cpu_offload"] is True
    assert plugin["transformer_cls_names_to_wrap"] == "Qwen3DecoderLayer"
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT" and plugin["activation_checkpointing"] is True
    assert dist.checkpoint_meta(config)["sharded"] is True

    # FSDP1: the `fsdp` list and fsdp_-prefixed keys
    config, _ = _validate(
        tmp_path,
        "fsdp:\n  - shard_grad_op\n  - auto_wrap\nfsdp_config:\n  fsdp_offload_params: false\n"
        "  fsdp_backward_prefetch: BACKWARD_PRE\n",
    )
    settings = dist.fsdp_settings(config)
    assert settings["version"] == 1 and settings["reshard_after_forward"] == "shard_grad_op"
    assert settings["backward_prefetch"] == "BACKWARD_PRE" and settings["cpu_offload"] is False

    with pytest.raises(UserError, match=r"c\.yaml:\d+: `fsdp\[0\]`: `fullshard` is not an fsdp option"):
        _validate(tmp_path, "fsdp:\n  - fullshard\n")
    with pytest.raises(UserError, match=r"(?s)unknown key `fsdp_config.ofload_params`.*offload_params"):
        _validate(tmp_path, "fsdp_config:\n  ofload_params: true\n")
    with pytest.raises(UserError, match="both on"):
        _validate(tmp_path, "gradient_checkpointing: true\nfsdp_config:\n  activation_checkpointing: true\n")


def test_distributed_section(tmp_path):
    config, _ = _validate(tmp_path, "distributed:\n  num_processes: 4\nddp_timeout: 600\n")
    assert config.distributed.num_processes == 4 and config.ddp_timeout == 600
    assert dist.trainer_args(config) == {"ddp_timeout": 600, "ddp_find_unused_parameters": False}
    from engine.cli.launcher import accelerate_args

    assert accelerate_args(config, 4, 0)[:3] == ["--multi_gpu", "--num_processes", "4"]
    config, _ = _validate(
        tmp_path,
        "distributed:\n  num_processes: 16\n  num_machines: 2\n  machine_rank: 1\n"
        "  main_process_ip: 10.0.0.1\n  main_process_port: 29500\n",
    )
    args = accelerate_args(config, 16, 1)
    assert args[args.index("--machine_rank") + 1] == "1" and "10.0.0.1" in args
    with pytest.raises(
        UserError, match=r"`distributed.machine_rank`: machine_rank 2 is not below num_machines 2"
    ):
        _validate(tmp_path, "distributed:\n  num_machines: 2\n  machine_rank: 2\n")
    with pytest.raises(UserError, match="`main_process_ip` is required with num_machines 2"):
        _validate(tmp_path, "distributed:\n  num_machines: 2\n  num_processes: 4\n")
    with pytest.raises(UserError, match="does not split evenly"):
        _validate(
            tmp_path,
            "distributed:\n  num_machines: 2\n  num_processes: 3\n  main_process_ip: h\n  main_process_port: 1\n",
        )


def test_control_file_reader_and_root_cause(tmp_path):
    from engine.run.control import Controls

    control_file.append_command(tmp_path, "save")  # left from an earlier job
    reader = control_file.ControlFile(control_file.control_path(tmp_path), from_start=False)
    c = Controls()
    assert reader.poll(c) == [] and not c.save_now.is_set()
    with open(control_file.control_path(tmp_path), "a") as f:
        f.write('{"command": "pause"}\n{"command": "st')  # a line still being written
    assert [x["command"] for x in reader.poll(c)] == ["pause"] and c.pause.is_set()
    with open(control_file.control_path(tmp_path), "a") as f:
        f.write('op", "reason": "x"}\n')
    assert [x["command"] for x in reader.poll(c)] == ["stop"] and c.stop_reason == "x"
    with pytest.raises(ValueError):
        control_file.append_command(tmp_path, "explode")

    teardown = Failure(0, 10, -signal.SIGTERM)
    assert root_cause([teardown, Failure(1, 11, -signal.SIGKILL)]).rank == 1
    assert root_cause([Failure(0, 10, 1), Failure(1, 11, -signal.SIGSEGV)]).rank == 1
    assert root_cause([teardown, Failure(1, 11, 2)]).rank == 1
    assert root_cause([Failure(0, 10, 2), Failure(1, 11, 2)]).rank == 0


def test_finish_names_the_root_cause(tmp_path):
    from engine.cli.launcher import finish

    events = tmp_path / "events.jsonl"
    start = {
        "t": 1,
        "kind": "start",
        "output_dir": str(tmp_path / "out"),
        "ranks": [{"rank": 0, "host": "a"}],
    }
    own = {"t": 2, "kind": "rank_error", "status": "failed", "message": "ValueError: boom", "traceback": "tb"}
    events.write_text(json.dumps(start) + "\n" + json.dumps(own) + "\n")
    finish(tmp_path, 0, "", [Failure(0, 10, 1), Failure(1, 11, -signal.SIGTERM)])
    records = read_events(events).records
    assert [r["kind"] for r in records] == ["start", "rank_error", "end"]  # rank 0's own error: no alert
    assert records[-1]["message"] == "ValueError: boom" and records[-1]["traceback"] == "tb"

    other = (
        tmp_path / "other"
    )  # a log of its own: rewriting the first would read as a cut-short log (its seal)
    other.mkdir()
    events = other / "events.jsonl"
    events.write_text(json.dumps(start) + "\n")
    finish(other, 0, "", [Failure(0, 10, -signal.SIGSEGV), Failure(1, 11, -signal.SIGTERM)])
    records = read_events(events).records
    assert [r["kind"] for r in records] == ["start", "alert", "end"]
    assert "rank 0 (pid 10 on a) was killed by SIGSEGV" in records[-1]["message"]
