"""Contract tests every model type must pass: Auto classes, save/load, pipeline, generation, backends, training."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, OPENAI_CLIP_MEAN

from tests.helpers import MODEL_TYPE_NAMES, VARIANT_IDS, VARIANTS, chat, sample_image, save_variant
from visual_token_compression import MODEL_TYPES
from visual_token_compression.tools.tiny import build_tiny


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def saved(request, tmp_path_factory):
    return save_variant(request.param, tmp_path_factory)


def test_auto_classes_in_fresh_process_give_identical_logits(saved, tmp_path):
    """Both processes load the saved folder, so their logits must match bit for bit. The in-memory model is only
    close: weights memory-mapped from safetensors sit at another alignment than freshly allocated ones, and MKL's
    one-row matrix product changes its summation with the alignment (measured: 6e-8 on logits of magnitude 0.45)."""
    model_type, model, processor, folder = saved
    image, prompt = sample_image(), chat(processor, "What is in the picture?")
    image.save(tmp_path / "image.png")
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = loaded(**inputs).logits
        in_memory_logits = model(**inputs).logits
    # 4 fp32 ulps at the logits' magnitude (about 2e-7 here): a few roundings apart, far below any real change.
    ulps = 4 * torch.finfo(torch.float32).eps * logits.abs().max().item()
    torch.testing.assert_close(in_memory_logits, logits, atol=ulps, rtol=0)
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")

    script = textwrap.dedent(
        f"""
        import json, torch
        from PIL import Image
        from safetensors.torch import load_file, save_file
        from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline
        import visual_token_compression  # registers the model types

        folder, work = {str(folder)!r}, {str(tmp_path)!r}
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        processor = AutoProcessor.from_pretrained(folder)
        image = Image.open(work + "/image.png")
        inputs = processor(images=image, text={prompt!r}, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        save_file({{"logits": logits, **{{k: v.contiguous() for k, v in inputs.items()}}}}, work + "/out.safetensors")
        base = AutoModel.from_pretrained(folder)
        generator = pipeline("image-text-to-text", model=folder)
        messages = [{{"role": "user", "content": [{{"type": "image", "image": image}}, {{"type": "text", "text": "Hi?"}}]}}]
        answer = generator(text=messages, max_new_tokens=3, generate_kwargs={{"do_sample": False}})
        print(json.dumps({{
            "config": type(AutoConfig.from_pretrained(folder)).__name__,
            "model": type(model).__name__, "base": type(base).__name__,
            "processor": type(processor).__name__, "pipeline_model": type(generator.model).__name__,
            "reply_role": answer[0]["generated_text"][-1]["role"],
        }}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    entry = MODEL_TYPES[model_type]
    assert report == {
        "config": entry.config_class.__name__,
        "model": entry.for_generation_class.__name__,
        "base": entry.model_class.__name__,
        "processor": entry.processor_class.__name__,
        "pipeline_model": entry.for_generation_class.__name__,
        "reply_role": "assistant",
    }
    reloaded = load_file(tmp_path / "out.safetensors")
    for name, tensor in inputs.items():
        assert torch.equal(reloaded[name], tensor), f"processor round trip changed {name}"
    assert torch.equal(reloaded["logits"], logits)


def test_batched_left_padded_generation_equals_one_by_one(saved):
    _, model, processor, _ = saved
    processor.tokenizer.padding_side = "left"
    images = [sample_image(1), sample_image(2, size=(24, 50))]
    prompts = [chat(processor, "Describe it."), chat(processor, "What colour is the object on the far left side?")]
    batch = processor(images=images, text=prompts, return_tensors="pt")
    assert batch["attention_mask"][0].sum() != batch["attention_mask"][1].sum(), "prompts must differ in length"
    batched = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for row, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        single = processor(images=image, text=prompt, return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=6, do_sample=False)
        assert batched[row, -6:].tolist() == alone[0, -6:].tolist()


def test_eager_and_sdpa_logits_agree(saved):
    _, _, processor, folder = saved
    inputs = processor(images=sample_image(3), text=chat(processor, "Anything?"), return_tensors="pt")
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = model(**inputs).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-4, rtol=0)


def test_flash_attention_2_is_accepted_or_refused_clearly(saved):
    _, _, _, folder = saved
    try:
        import flash_attn  # noqa: F401

        has_flash = torch.cuda.is_available()
    except ImportError:
        has_flash = False
    if has_flash:
        model = AutoModelForImageTextToText.from_pretrained(
            folder, attn_implementation="flash_attention_2", dtype=torch.bfloat16, device_map="cuda"
        )
        assert model.config._attn_implementation == "flash_attention_2"
    else:
        with pytest.raises((ImportError, ValueError), match="(?i)flash"):
            AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="flash_attention_2")


def test_gradient_checkpointing_trains_like_plain_backward(saved):
    _, _, processor, folder = saved
    inputs = processor(images=sample_image(4), text=chat(processor, "Train on this.") + " A cat.", return_tensors="pt")
    results = []
    for checkpointing in (False, True):
        model = AutoModelForImageTextToText.from_pretrained(folder).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.is_gradient_checkpointing
        torch.manual_seed(0)  # same dropout masks in both runs (checkpointing replays the RNG state)
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert any(n.startswith("model.compressor.") for n in grads), "compressor got no gradient"
        assert any(n.startswith("model.language_model.") for n in grads), "LLM got no gradient"
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-5)


def test_placeholder_feature_mismatch_names_both_counts(saved):
    _, model, processor, _ = saved
    inputs = processor(images=sample_image(5), text=chat(processor, "Hi"), return_tensors="pt")
    positions = (inputs["input_ids"][0] == processor.image_token_id).nonzero().flatten()
    inputs["input_ids"][0, positions[0]] = processor.tokenizer.unk_token_id
    placeholders = len(positions) - 1
    with pytest.raises(ValueError, match=rf"{placeholders} image placeholder tokens.*{len(positions)} features"):
        model(**inputs)


def test_image_tokens_without_pixel_values_are_refused(saved):
    _, model, processor, _ = saved
    inputs = processor(images=sample_image(6), text=chat(processor, "Hi"), return_tensors="pt")
    inputs.pop("pixel_values")
    with pytest.raises(ValueError, match="no pixel_values"):
        model(**inputs)


@pytest.mark.parametrize("model_type", MODEL_TYPE_NAMES)
@pytest.mark.parametrize("vision", ["clip", "siglip", "dinov2"])
@pytest.mark.parametrize("text", ["llama", "qwen2"])
def test_vision_tower_and_llm_combinations(model_type, vision, text):
    # VisionZip ranks patches by the CLS attention it recomputes from a CLIP layer: SigLIP has no CLS token, and
    # DINOv2's layers are built differently.
    refusal = {"siglip": "has no CLS token", "dinov2": "built differently"}
    if model_type == "visionzip" and vision in refusal:
        with pytest.raises(ValueError, match=refusal[vision]):
            build_tiny(model_type, vision=vision, text=text)
        return
    model, processor = build_tiny(model_type, vision=vision, text=text)
    assert model.config.vision_config.model_type.startswith(vision)
    # Pixels normalised as the tower family was trained.
    mean = {"clip": OPENAI_CLIP_MEAN, "siglip": [0.5] * 3, "dinov2": IMAGENET_DEFAULT_MEAN}[vision]
    assert list(processor.image_processor.image_mean) == list(mean)
    assert model.config.text_config.model_type == text
    inputs = processor(images=sample_image(7), text=chat(processor, "Which?"), return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs)
    assert output.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(output.logits).all()
    assert output.image_hidden_states.shape[-1] == model.config.text_config.hidden_size
    generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 2
