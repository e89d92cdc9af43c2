"""Tests of pretrain.py on a tiny synthetic caption set (CPU, seconds): one pass = two passes,
the lr schedule, parameter groups, gradient accumulation, exact resume, data parallelism,
stopping on a non-finite loss, the vocabulary check, metrics and curves."""

import argparse
import dataclasses
import functools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

import demo_data
import data
import formats
import training
import pretrain
from model import CONFIGS, build_model, build_optimizer, no_weight_decay, part_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"빨간": (220, 30, 30), "파란": (30, 60, 220), "초록": (30, 180, 60), "노란": (230, 210, 30)}
COUNT_WORDS = ["한", "두", "세"]


def make_caption_set(root, num_images=24):
    """Pictures of 1-3 coloured circles or squares, two Korean captions each, and a tokenizer."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = random.Random(0)
    records = []
    for index in range(num_images):
        colour, shape, count = rng.choice(list(COLOURS)), rng.choice(["원", "네모"]), rng.randint(1, 3)
        image = Image.new("RGB", (48, 48), "white")
        draw = ImageDraw.Draw(image)
        for position in range(count):
            box = [4 + 14 * position, 16, 14 + 14 * position, 28]
            (draw.ellipse if shape == "원" else draw.rectangle)(box, fill=COLOURS[colour])
        name = f"image_{index:03d}.png"
        image.save(os.path.join(root, "images", name))
        records.append({"image": name, "caption": f"{colour} {shape} {COUNT_WORDS[count - 1]} 개가 있다", "image_id": str(index)})
        records.append({"image": name, "caption": f"흰 바탕에 {colour} {shape}", "image_id": str(index)})
    with open(os.path.join(root, "captions.jsonl"), "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    demo_data.train_tokenizer([record["caption"] for record in records], os.path.join(root, "tokenizer.json"), 80)
    return {"captions": os.path.join(root, "captions.jsonl"), "images": os.path.join(root, "images"),
            "tokenizer": os.path.join(root, "tokenizer.json")}


@pytest.fixture(scope="module")
def caption_set(tmp_path_factory):
    return make_caption_set(str(tmp_path_factory.mktemp("captions")))


def run_arguments(caption_set, out, *extra):
    return ["--captions", caption_set["captions"], "--images", caption_set["images"],
            "--tokenizer", caption_set["tokenizer"], "--config", "tiny", "--batch", "8", "--micro-batch", "4",
            "--steps", "6", "--lr", "1e-3", "--max-len", "16", "--log-every", "2", "--eval-every", "3",
            "--save-every", "2", "--workers", "0", "--out", str(out), *extra]


@pytest.fixture
def single_thread():
    """Multi-threaded CPU kernels may sum in a different order from run to run; with one thread two
    runs are bitwise equal, which is what the exactness tests compare."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model_and_batch(caption_set, size=8, seed=0, arch="meter"):
    tokenizer = data.Tokenizer.load(caption_set["tokenizer"])
    torch.manual_seed(seed)
    model = build_model(dataclasses.replace(CONFIGS["tiny"], vocab_size=tokenizer.vocab_size, arch=arch))
    entries = formats.read_captions(caption_set["captions"], caption_set["images"])[:size]
    dataset = data.CaptionDataset(entries, 64)
    batch = data.collate_captions([dataset[index] for index in range(size)], tokenizer, 16)
    return model, tokenizer, batch


def gradients(model):
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


@pytest.mark.parametrize("arch", ["meter", "vilt"])
def test_one_pass_equals_two_pass(caption_set, arch):
    model, tokenizer, batch = tiny_model_and_batch(caption_set, arch=arch)
    model.eval()  # no dropout: both ways see the same network
    batch = pretrain.add_pretrain_targets(batch, tokenizer, torch.Generator().manual_seed(1))
    one_pass = pretrain.pretrain_losses(model, batch)
    one_pass["loss"].backward()
    one_pass_gradients = gradients(model)
    model.zero_grad()
    two_pass = pretrain.pretrain_losses_two_pass(model, batch)
    two_pass["loss"].backward()
    for key in ["loss", "mlm_loss_sum", "mlm_correct", "mlm_count", "itm_loss_sum", "itm_correct", "itm_count"]:
        torch.testing.assert_close(one_pass[key], two_pass[key], rtol=1e-5, atol=1e-6)
    two_pass_gradients = gradients(model)
    assert one_pass_gradients.keys() == two_pass_gradients.keys()
    for name in one_pass_gradients:
        torch.testing.assert_close(one_pass_gradients[name], two_pass_gradients[name], rtol=1e-4, atol=1e-6)


def test_lr_schedule_warms_up_then_decays():
    rates = [training.lr_at(step, 100, 1.0) for step in range(101)]
    assert rates[0] == 0.0 and rates[10] == pytest.approx(1.0) and rates[100] == 0.0
    assert rates[5] == pytest.approx(0.5) and rates[55] == pytest.approx(0.5)
    assert all(earlier < later for earlier, later in zip(rates[:10], rates[1:11]))
    assert all(earlier > later for earlier, later in zip(rates[10:100], rates[11:101]))


def test_parameter_groups_multipliers_and_no_decay(caption_set):
    model, _, _ = tiny_model_and_batch(caption_set)
    optimizer = build_optimizer(model, 1e-5, pretrain.PRETRAIN_LR_MULTIPLIERS)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-8
    seen = set()
    for group in optimizer.param_groups:
        for name in group["names"]:
            seen.add(name)
            assert part_of(name) == group["part"]
            assert group["weight_decay"] == (0.0 if no_weight_decay(name) else 0.01)
        assert group["lr"] == pytest.approx(1e-5 * {"vision": 1, "text": 1, "fusion": 5, "heads": 5}[group["part"]])
    assert seen == {name for name, _ in model.named_parameters()}
    assert {group["part"] for group in optimizer.param_groups} == {"vision", "text", "fusion", "heads"}
    names = {name for group in optimizer.param_groups if group["weight_decay"] == 0 for name in group["names"]}
    assert {"vision.embeddings.class_embedding", "vision.embeddings.position_embedding",
            "text.embeddings.position.weight", "text.embeddings.token_type.weight", "modality.weight"} <= names
    assert any(name.endswith("bias") for name in names) and not any(name.endswith("proj.weight") for name in names)


def test_micro_batches_add_up_to_the_full_batch(caption_set):
    model, tokenizer, batch = tiny_model_and_batch(caption_set)
    model.eval()
    halves = [{key: value[start:start + 4] for key, value in batch.items()} for start in (0, 4)]
    halves = [pretrain.add_pretrain_targets(half, tokenizer, torch.Generator().manual_seed(seed))
              for seed, half in enumerate(halves)]
    # The full batch with the same targets: ITM pairs stay inside each half, shifted by its offset.
    full = {key: torch.cat([halves[0][key], halves[1][key] + (4 if key == "image_index" else 0)])
            for key in ["pixels", "input_ids", "attention_mask", "masked_ids", "mlm_labels", "image_index", "itm_labels"]}
    pretrain.pretrain_losses(model, full)["loss"].backward()
    full_gradients = gradients(model)
    model.zero_grad()
    masked_count = sum((half["mlm_labels"] != -100).sum() for half in halves).float()
    for half in halves:
        pretrain.pretrain_losses(model, half, masked_count, 8)["loss"].backward()
    for name, gradient in gradients(model).items():
        torch.testing.assert_close(gradient, full_gradients[name], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile does not run on this platform")
def test_compiled_step_matches_eager(caption_set, monkeypatch, request, single_thread):
    """--compile step as it ships, compiled by the aot_eager backend (AOTAutograd's forward and backward graphs,
    run without inductor's code generation) through a graph-counting backend: the step is one graph. A training
    step's losses and gradients equal eager ones within 1e-5, dropout included. The first batch compiles the step
    for its sizes; the second, with another text length and another count of masked tokens, compiles it once
    more with them dynamic; the third, with other counts again, must run that without compiling."""
    from torch._dynamo.testing import CompileCounterWithBackend
    tokenizer = data.Tokenizer.load(caption_set["tokenizer"])
    cfg = dataclasses.replace(CONFIGS["tiny"], vocab_size=tokenizer.vocab_size, vision_layers=1, text_layers=1,
                              fusion_layers=1, dropout=0.1)  # one layer of each kind: a short compilation
    torch.manual_seed(0)
    eager, compiled = build_model(cfg).train(), build_model(cfg).train()
    compiled.load_state_dict(eager.state_dict())
    # the globals this test or compile_step changes, put back when it ends; production's values stay in force
    for name in ("capture_dynamic_output_shape_ops", "error_on_recompile"):
        monkeypatch.setattr(torch._dynamo.config, name, getattr(torch._dynamo.config, name))
    request.addfinalizer(torch._dynamo.reset)  # and no compiled code of this test stays behind
    graphs = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=graphs))  # before compiling
    flags = argparse.Namespace(recompute=False, compile="step")
    objectives = {eager: training.Objective(eager, pretrain.pretrain_losses),
                  compiled: training.wrap_objective(compiled, pretrain.pretrain_losses, flags, 1, torch.device("cpu"))[0]}
    dataset = data.CaptionDataset(formats.read_captions(caption_set["captions"], caption_set["images"]), cfg.image_size)
    lengths, masked_counts = set(), set()
    for number, (seed, indices) in enumerate([(0, range(8)), (2, range(1, 16, 2)), (3, range(0, 16, 2))]):
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", number == 2)
        batch = data.collate_captions([dataset[index] for index in indices], tokenizer, 16)
        batch = pretrain.add_pretrain_targets(batch, tokenizer, torch.Generator().manual_seed(seed))
        masked_count = float((batch["mlm_labels"] != -100).sum())
        lengths.add(batch["input_ids"].shape[1])
        masked_counts.add(masked_count)
        results = {}
        for model, objective in objectives.items():
            model.zero_grad(set_to_none=True)
            torch.manual_seed(seed)  # the same dropout masks in both
            losses = objective(batch, mlm_normaliser=masked_count, itm_normaliser=8)
            losses["loss"].backward()
            results[model] = losses, gradients(model)
        assert graphs.frame_count == min(number + 1, 2), "one graph per compilation: no graph break"
        for name, value in results[eager][0].items():
            torch.testing.assert_close(results[compiled][0][name], value.detach(), rtol=1e-5, atol=1e-5)
        assert results[compiled][1].keys() == results[eager][1].keys()
        for name, gradient in results[eager][1].items():
            torch.testing.assert_close(results[compiled][1][name], gradient, rtol=1e-5, atol=1e-5)
    assert len(lengths) == 2 and len(masked_counts) == 3


def test_resume_after_a_crash_is_exact(caption_set, tmp_path, monkeypatch, single_thread):
    pretrain.main(run_arguments(caption_set, tmp_path / "straight"))

    calls = {"count": 0}
    original = pretrain.pretrain_losses

    def crash_in_step_five(model, *arguments, **keywords):
        calls["count"] += model.training  # held-out evaluations run in eval mode and are not counted
        if calls["count"] == 9:  # first micro-batch of step 5 (two micro-batches per step)
            raise RuntimeError("simulated crash")
        return original(model, *arguments, **keywords)

    monkeypatch.setattr(pretrain, "pretrain_losses", crash_in_step_five)
    with pytest.raises(SystemExit, match="RuntimeError: simulated crash"):
        pretrain.main(run_arguments(caption_set, tmp_path / "crashed"))
    monkeypatch.setattr(pretrain, "pretrain_losses", original)
    assert json.loads((tmp_path / "crashed" / "training_state.json").read_text())["step"] == 4
    pretrain.main(run_arguments(caption_set, tmp_path / "crashed", "--resume"))

    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "crashed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    for run in ["straight", "crashed"]:
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        train_rows = [row for row in rows if row["split"] == "train"]
        assert [row["step"] for row in train_rows] == [2, 4, 6]
        assert {"step", "lr", "mlm_loss", "mlm_acc", "itm_loss", "itm_acc", "grad_norm", "samples_per_s"} <= train_rows[0].keys()
        assert [row["step"] for row in rows if row["split"] == "val"] == [3, 6]
    assert sorted(os.listdir(tmp_path / "straight")) == [
        "curves.png", "metrics.jsonl", "model.safetensors", "optimizer.safetensors",
        "step_000004", "step_000006", "tokenizer.json", "training_state.json"]
    with Image.open(tmp_path / "straight" / "curves.png") as curves:  # loss and accuracy charts side by side
        pixels = np.asarray(curves.convert("RGB"))
    for panel in np.split(pixels, 2, axis=1):  # each chart: mlm (train), itm (train), mlm (val), itm (val)
        lines = panel[:, : int(0.6 * panel.shape[1])]  # left of the legend: the curves only
        for colour in [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]:  # tab10's first four
            assert (lines == colour).all(axis=2).sum() >= 20, f"no curve in {colour}"


def test_two_processes_match_one(caption_set, tmp_path, single_thread):
    pretrain.main(run_arguments(caption_set, tmp_path / "single", "--steps", "3"))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(REPO, "pretrain.py"), *run_arguments(caption_set, tmp_path / "parallel", "--steps", "3")]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    single = load_file(tmp_path / "single" / "model.safetensors")
    parallel = load_file(tmp_path / "parallel" / "model.safetensors")
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "parallel" / "training_state.json").read_text())["world_size"] == 2
    logs = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("single", "parallel")]
    assert [(row["step"], row["split"], sorted(row)) for row in logs[1]] == [
        (row["step"], row["split"], sorted(row)) for row in logs[0]]
    for single_row, parallel_row in zip(*logs):  # every logged value but the speed
        for name, value in single_row.items():
            if name not in ("step", "split", "samples_per_s"):
                assert parallel_row[name] == pytest.approx(value, rel=1e-4, abs=1e-6), (single_row["step"], name)


def test_non_finite_loss_stops_and_keeps_the_checkpoint(caption_set, tmp_path, monkeypatch, capsys):
    calls = {"count": 0}
    original = pretrain.pretrain_losses

    def poisoned_in_step_three(model, *arguments, **keywords):
        calls["count"] += model.training
        losses = original(model, *arguments, **keywords)
        if calls["count"] == 5:
            losses["loss"] = losses["loss"] * float("nan")
            losses["mlm_loss_sum"] = losses["mlm_loss_sum"] * float("nan")
        return losses

    monkeypatch.setattr(pretrain, "pretrain_losses", poisoned_in_step_three)
    with pytest.raises(SystemExit) as stop:
        pretrain.main(run_arguments(caption_set, tmp_path / "run"))
    message = str(stop.value.code)
    assert message.startswith("error: loss is not finite at step 3") and "step 2" in message
    assert "\n" not in message
    assert json.loads((tmp_path / "run" / "training_state.json").read_text())["step"] == 2
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_tokenizer_that_does_not_fit_the_text_encoder_is_refused(caption_set, tmp_path):
    text_checkpoint = tmp_path / "text.safetensors"
    save_file({"embeddings.word_embeddings.weight": torch.zeros(100, 8)}, str(text_checkpoint))
    with pytest.raises(SystemExit) as stop:
        pretrain.main(run_arguments(caption_set, tmp_path / "run", "--text", str(text_checkpoint)))
    message = str(stop.value.code)
    tokenizer_size = data.Tokenizer.load(caption_set["tokenizer"]).vocab_size
    assert message.startswith("error: ") and str(tokenizer_size) in message and "100" in message


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--help"])
    printed = capsys.readouterr().out
    for flag in ["--config", "--batch", "--micro-batch", "--steps", "--lr", "--image-size", "--max-len", "--seed",
                 "--log-every", "--eval-every", "--save-every", "--out", "--resume", "--device", "--workers",
                 "--compile", "--max-bad-share", "--demo", "--captions", "--images", "--tokenizer", "--clip", "--text"]:
        assert flag in printed


def test_sigterm_mid_run_saves_and_resumes_exactly(caption_set, tmp_path, monkeypatch, single_thread):
    """What a scheduler's preemption does: SIGTERM during step 3 finishes that step, checkpoints it and
    exits with the command that resumes; the resumed run ends bitwise equal to an uninterrupted one."""
    pretrain.main(run_arguments(caption_set, tmp_path / "straight"))
    calls = {"count": 0}
    original = pretrain.pretrain_losses

    def terminated_in_step_three(model, *arguments, **keywords):
        calls["count"] += model.training
        if calls["count"] == 5:  # first micro-batch of step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return original(model, *arguments, **keywords)

    monkeypatch.setattr(pretrain, "pretrain_losses", terminated_in_step_three)
    with pytest.raises(SystemExit) as stop:
        pretrain.main(run_arguments(caption_set, tmp_path / "stopped"))
    message = str(stop.value.code)
    assert message.startswith("stopped by SIGTERM after step 3") and message.endswith("--resume") and "\n" not in message
    assert json.loads((tmp_path / "stopped" / "training_state.json").read_text())["step"] == 3
    assert not (tmp_path / "stopped" / "running.json").exists()
    monkeypatch.setattr(pretrain, "pretrain_losses", original)
    pretrain.main(run_arguments(caption_set, tmp_path / "stopped", "--resume"))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "model.safetensors")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_a_folder_holding_a_run_is_refused_unless_told(caption_set, tmp_path):
    pretrain.main(run_arguments(caption_set, tmp_path / "run", "--steps", "2"))
    with pytest.raises(SystemExit) as stop:
        pretrain.main(run_arguments(caption_set, tmp_path / "run", "--steps", "2"))
    message = str(stop.value.code)
    assert "holds a finished run (step 2 of 2)" in message and "--resume" in message and "--overwrite" in message
    pretrain.main(run_arguments(caption_set, tmp_path / "run", "--steps", "2", "--overwrite"))

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process on this machine marked as training into the folder
        (tmp_path / "run" / "running.json").write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        with pytest.raises(SystemExit) as stop:
            pretrain.main(run_arguments(caption_set, tmp_path / "run", "--steps", "2", "--overwrite"))
        assert f"process {sleeper.pid} on this machine is training into it" in str(stop.value.code)
    finally:
        sleeper.kill()
        sleeper.wait()
    pretrain.main(run_arguments(caption_set, tmp_path / "run", "--steps", "2", "--overwrite"))  # the lock went stale


def test_bf16_autocast_step_matches_fp32(caption_set):
    """The whole pretraining step under CPU bf16 autocast (what CUDA runs): losses within 1% of fp32, losses
    and gradients in fp32, every gradient finite."""
    model, tokenizer, batch = tiny_model_and_batch(caption_set)
    model.eval()
    batch = pretrain.add_pretrain_targets(batch, tokenizer, torch.Generator().manual_seed(1))
    full = pretrain.pretrain_losses(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = pretrain.pretrain_losses(model, batch)
    half["loss"].backward()
    for name in ("loss", "mlm_loss_sum", "itm_loss_sum"):
        assert half[name].dtype == torch.float32
        torch.testing.assert_close(half[name], full[name].detach(), rtol=1e-2, atol=1e-2)
    assert all(parameter.grad.dtype == torch.float32 and torch.isfinite(parameter.grad).all()
               for parameter in model.parameters() if parameter.grad is not None)


def test_bf16_training_run_on_cpu(caption_set, tmp_path):
    pretrain.main(run_arguments(caption_set, tmp_path / "bf16", "--dtype", "bf16", "--steps", "2"))
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["mlm_loss"]) and math.isfinite(row["itm_loss"]) for row in rows)
    assert {tensor.dtype for tensor in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.float32}
