"""The CUDA path, checked on a GPU: the same numbers as on the CPU, bf16 sane, resume exact, both scripts end to
end. Skipped where CUDA is absent (CI and the CPU machines); run on a GPU machine as the README's GPU check:

    python -m pytest -q tests/test_cuda.py && python bench.py --config base --device cuda --dtype bf16

Speed is bench.py's business: nothing here is timed.
"""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import demo_data
import data
import finetune
import formats
import pretrain
from model import CONFIGS, build_model, build_optimizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU checks need one")

SMALL_DEMO = {"caption_images": 60, "vqa_train_images": 40, "vqa_dev_images": 10, "questions_per_image": 4,
              "image_size": 64, "vocab_size": 200}


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    return demo_data.make_demo(str(tmp_path_factory.mktemp("cuda") / "demo_data"), **SMALL_DEMO)


def model_and_batch(demo_set, device, seed=0):
    tokenizer = data.Tokenizer.load(demo_set["tokenizer"])
    torch.manual_seed(seed)
    model = build_model(dataclasses.replace(CONFIGS["tiny"], vocab_size=tokenizer.vocab_size)).to(device)
    entries = formats.read_captions(demo_set["captions"], demo_set["images"])[:8]
    dataset = data.CaptionDataset(entries, model.cfg.image_size)
    batch = data.collate_captions([dataset[index] for index in range(8)], tokenizer, 16)
    batch = pretrain.add_pretrain_targets(batch, tokenizer, torch.Generator().manual_seed(1))
    return model, {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def test_cuda_fp32_forward_and_backward_equal_cpu(demo_set):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    results = {}
    for device in ("cpu", "cuda"):
        model, batch = model_and_batch(demo_set, device)
        model.eval()
        losses = pretrain.pretrain_losses(model, batch)
        losses["loss"].backward()
        results[device] = (losses["loss"].item(), {name: parameter.grad.cpu() for name, parameter
                                                   in model.named_parameters() if parameter.grad is not None})
    assert abs(results["cuda"][0] - results["cpu"][0]) <= 1e-4
    worst = max((results["cuda"][1][name] - gradient).abs().max().item() for name, gradient in results["cpu"][1].items())
    print(f"CUDA fp32 vs CPU: loss difference {abs(results['cuda'][0] - results['cpu'][0]):.1e}, gradients {worst:.1e}")
    assert worst <= 1e-4


def test_bf16_step_is_finite_and_close_and_fused_adamw_runs(demo_set):
    model, batch = model_and_batch(demo_set, "cuda")
    model.eval()
    full = pretrain.pretrain_losses(model, batch)["loss"].item()
    optimizer = build_optimizer(model, 1e-4, pretrain.PRETRAIN_LR_MULTIPLIERS)
    assert optimizer.defaults["fused"]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = pretrain.pretrain_losses(model, batch)["loss"]
    half.backward()
    optimizer.step()
    assert half.dtype == torch.float32 and abs(half.item() - full) <= 2e-2 * abs(full)
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_resume_is_exact_on_cuda(demo_set, tmp_path, monkeypatch):
    """A run that crashes in step 3 and is resumed ends where the uninterrupted run ends (deterministic kernels)."""
    arguments = ["--captions", demo_set["captions"], "--images", demo_set["images"], "--tokenizer", demo_set["tokenizer"],
                 "--config", "tiny", "--batch", "8", "--micro-batch", "4", "--steps", "4", "--max-len", "16",
                 "--log-every", "2", "--eval-every", "4", "--save-every", "2", "--workers", "0", "--device", "cuda"]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    pretrain.main([*arguments, "--out", str(tmp_path / "straight")])
    calls = {"count": 0}
    original = pretrain.pretrain_losses

    def crash_in_step_three(model, *rest, **keywords):
        calls["count"] += model.training
        if calls["count"] == 5:
            raise RuntimeError("simulated crash")
        return original(model, *rest, **keywords)

    monkeypatch.setattr(pretrain, "pretrain_losses", crash_in_step_three)
    with pytest.raises(SystemExit, match="RuntimeError: simulated crash"):
        pretrain.main([*arguments, "--out", str(tmp_path / "crashed")])
    monkeypatch.setattr(pretrain, "pretrain_losses", original)
    pretrain.main([*arguments, "--out", str(tmp_path / "crashed"), "--resume"])
    torch.use_deterministic_algorithms(False)
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "crashed" / "model.safetensors")
    worst = max((straight[name] - resumed[name]).abs().max().item() for name in straight)
    print(f"CUDA resume: max difference {worst:.1e}")
    assert worst <= 1e-6


def test_both_scripts_end_to_end_on_cuda(demo_set, tmp_path):
    common = ["--images", demo_set["images"], "--tokenizer", demo_set["tokenizer"], "--config", "tiny", "--batch", "32",
              "--steps", "20", "--log-every", "10", "--eval-every", "10", "--save-every", "20", "--workers", "2",
              "--device", "cuda"]
    pretrain.main(["--captions", demo_set["captions"], *common, "--lr", "2e-4", "--out", str(tmp_path / "pretrain")])
    finetune.main(["--train", demo_set["vqa_train"], "--dev", demo_set["vqa_dev"], *common, "--lr", "1e-4",
                   "--pretrained", str(tmp_path / "pretrain"), "--augment", "safe", "--out", str(tmp_path / "finetune")])
    results = json.loads((tmp_path / "finetune" / "results.json").read_text(encoding="utf-8"))
    assert results["overall"]["n"] > 0 and [row["step"] for row in results["history"]] == [10, 20]
