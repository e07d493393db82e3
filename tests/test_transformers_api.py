"""The transformers model API every model type must follow: tuples, `get_image_features`, parallel plans, configs."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, GenerationMixin
from transformers.integrations.accelerate import infer_auto_device_map
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tests.helpers import VARIANT_IDS, VARIANTS, chat, sample_image
from visual_token_compression import MODEL_TYPES, CompressedVLMForConditionalGeneration
from visual_token_compression.compat import LM_HEAD_TP_PLAN, output_cache
from visual_token_compression.tools import cli
from visual_token_compression.tools.tiny import build_tiny


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def tiny(request):
    """A tiny model of each variant with one image-and-question batch; labels skip the image placeholders."""
    model_type, config_kwargs = request.param
    model, processor = build_tiny(model_type, **config_kwargs)
    inputs = processor(images=sample_image(), text=chat(processor, "What is in the picture?"), return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    return model_type, model, processor, dict(inputs), labels


def image_inputs(model, inputs) -> dict:
    names = ("pixel_values", "image_sizes", *type(model.model).compressor_input_names)
    return {name: inputs[name] for name in names if name in inputs}


@torch.no_grad()
def test_return_dict_false_gives_tuples_with_the_loss_first(tiny):
    _, model, _, inputs, labels = tiny
    output = model(**inputs, labels=labels)
    as_tuple = model(**inputs, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(output.to_tuple())
    assert torch.equal(as_tuple[0], output.loss) and torch.equal(as_tuple[1], output.logits)
    base_output = model.model(**inputs)
    base_tuple = model.model(**inputs, return_dict=False)
    assert isinstance(base_tuple, tuple) and torch.equal(base_tuple[0], base_output.last_hidden_state)

    model.config.return_dict = False
    try:
        assert isinstance(model(**inputs), tuple) and isinstance(model.model(**inputs), tuple)
        assert not isinstance(model(**inputs, return_dict=True), tuple)
        # Generation asks for dicts itself, whatever the config says.
        generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    finally:
        model.config.return_dict = True
    assert torch.equal(generated, model.generate(**inputs, max_new_tokens=2, do_sample=False))


@torch.no_grad()
def test_get_image_features_returns_the_tower_output_with_compressed_features_as_pooler_output(tiny):
    """As Llava's: `pooler_output` holds one (tokens, hidden) tensor per image, the tower's hidden states on request."""
    _, model, _, inputs, _ = tiny
    images = image_inputs(model, inputs)
    tower = model.model.vision_tower(images["pixel_values"], output_hidden_states=True)
    features = model.get_image_features(**images)
    assert isinstance(features, BaseModelOutputWithPooling)
    assert features.hidden_states is None
    torch.testing.assert_close(features.last_hidden_state, tower.last_hidden_state)
    assert isinstance(features.pooler_output, list) and len(features.pooler_output) == 1  # one image
    compressed = model.model.get_compressed_image_features(
        **{name: value for name, value in images.items() if name != "image_sizes"}
    )
    views = images["pixel_values"].shape[0]
    assert compressed.shape[:1] == (views,) and compressed.shape[-1] == model.config.text_config.hidden_size
    torch.testing.assert_close(features.pooler_output[0], compressed.flatten(0, 1))
    torch.testing.assert_close(model(**inputs).image_hidden_states, compressed)

    with_states = model.model.get_image_features(**images, output_hidden_states=True)
    assert len(with_states.hidden_states) == len(tower.hidden_states)
    for ours, theirs in zip(with_states.hidden_states, tower.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs)
    as_tuple = model.get_image_features(**images, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], tower.last_hidden_state)
    torch.testing.assert_close(torch.cat(as_tuple[1]), compressed.flatten(0, 1))


def test_lm_head_has_a_tensor_parallel_plan(tiny):
    _, model, _, _, _ = tiny
    assert model._tp_plan["lm_head"] == LM_HEAD_TP_PLAN["lm_head"]
    assert type(model)._tp_plan == LM_HEAD_TP_PLAN


def block_classes(model) -> set[str]:
    """The first vision-encoder layer, the first decoder layer and the compressor of a model."""
    modules = dict(model.named_modules())
    names = ["model.compressor", "model.language_model.layers.0"]
    names += [name for name in modules if name.startswith("model.vision_tower.") and name.endswith("layers.0")]
    assert len(names) == 3, names
    return {type(modules[name]).__name__ for name in names}


def test_device_map_auto_never_splits_a_block(tiny):
    """With devices too small for the model, every tower layer, decoder layer and the compressor stays whole."""
    _, model, _, _, _ = tiny
    no_split = set(model._no_split_modules)
    assert block_classes(model) <= no_split
    largest = max(
        sum(p.numel() * p.element_size() for p in module.parameters())
        for module in model.modules()
        if type(module).__name__ in no_split
    )
    max_memory = {device: int(1.2 * largest) for device in range(8)} | {"cpu": 10**12}
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    assert len(set(device_map.values())) > 2, "the test must make the model span several devices"

    def device_of(parameter_name: str):
        prefix = max((key for key in device_map if parameter_name.startswith(f"{key}.") or key == ""), key=len)
        return device_map[prefix]

    for name, module in model.named_modules():
        if type(module).__name__ in no_split:
            devices = {device_of(f"{name}.{parameter}") for parameter, _ in module.named_parameters()}
            assert len(devices) <= 1, f"{name} ({type(module).__name__}) is split over {devices}"


@pytest.mark.parametrize("key", ["vision_config", "text_config"])
def test_sub_configs_load_as_their_own_config_class(tiny, key, tmp_path):
    _, model, _, _, _ = tiny
    config_class = type(model.config)
    assert config_class.sub_configs[key] is AutoConfig
    getattr(model.config, key).save_pretrained(tmp_path)
    loaded = config_class.sub_configs[key].from_pretrained(tmp_path)
    assert type(loaded) is type(getattr(model.config, key))
    expected = {**getattr(model.config, key).to_dict(), "_name_or_path": str(tmp_path)}
    assert loaded.to_dict() == expected


@torch.no_grad()
def test_shift_labels_give_the_loss_of_the_labels_they_shift(tiny):
    """`shift_labels` (as context parallelism passes them) are the labels shifted by one; the loss must not change,
    also for SeTok, whose unfilled image slots sit before its cluster tokens."""
    model_type, model, _, inputs, labels = tiny
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    loss = model(**inputs, labels=labels).loss
    # Exactly: the same targets at the same positions.
    torch.testing.assert_close(model(**inputs, labels=labels, shift_labels=shift_labels).loss, loss, atol=0, rtol=0)
    if model_type == "setok":
        num_tokens = model.model.get_image_features(inputs["pixel_values"]).compressor_output.num_tokens
        assert (num_tokens < model.config.max_image_tokens).all(), "the test needs unfilled slots"


def test_forward_names_the_base_arguments(tiny):
    """Every ForConditionalGeneration takes the base's arguments by name, typed, with the cache's old name too."""
    _, model, _, inputs, _ = tiny
    base = inspect.signature(CompressedVLMForConditionalGeneration.forward).parameters
    ours = inspect.signature(type(model).forward).parameters
    for name, parameter in base.items():
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD:
            assert name in ours, f"{type(model).__name__}.forward does not name {name}"
            assert (ours[name].annotation, ours[name].default) == (parameter.annotation, parameter.default), name

    with torch.no_grad():
        prefill = model(**inputs, use_cache=True, logits_to_keep=1)
        assert prefill.logits.shape[1] == 1
        mask = F.pad(inputs["attention_mask"], (0, 1), value=1)
        step = model(input_ids=inputs["input_ids"][:, -1:], attention_mask=mask, past_key_values=output_cache(prefill))
    assert step.logits.shape[1] == 1


@pytest.mark.parametrize("with_base_model", [False, True])
def test_push_to_a_local_dir_from_the_command_line(tiny, with_base_model, tmp_path):
    _, model, processor, _, _ = tiny
    model.save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    argv = ["push", "--model", str(tmp_path / "saved"), "--local-dir", str(tmp_path / "hub")]
    argv += ["--base-model", "org/original"] if with_base_model else []
    assert cli.main(argv) == 0
    readme = (tmp_path / "hub" / "README.md").read_text(encoding="utf-8")
    assert ("org/original" in readme) == with_base_model
    assert (tmp_path / "hub" / "model.safetensors").is_file()


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_generation_classes_list_generation_mixin_directly(model_type):
    """As transformers' own models do (`class LlavaForConditionalGeneration(LlavaPreTrainedModel, GenerationMixin)`):
    its generation tests and `can_generate` read the literal bases; the base models cannot generate."""
    entry = MODEL_TYPES[model_type]
    assert GenerationMixin in entry.for_generation_class.__bases__
    assert entry.for_generation_class.can_generate() and not entry.model_class.can_generate()


@torch.no_grad()
def test_each_image_gets_its_own_pooler_output_entry():
    """TokenPacker-HD cuts images of different shapes into different numbers of views; `pooler_output` regroups
    them per image (from `image_sizes`), and refuses to guess without it."""
    model, processor = build_tiny("tokenpacker", patch_num=9)
    tile = model.config.vision_config.image_size
    images = [Image.new("RGB", (3 * tile, tile), "red"), Image.new("RGB", (tile, tile), "blue")]
    inputs = processor(images=images, text=["<image>a", "<image>b"], return_tensors="pt")
    views = [processor.num_views((image.height, image.width)) for image in images]
    assert views == [4, 1] and inputs["pixel_values"].shape[0] == 5
    features = model.get_image_features(inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    per_view = model.model.get_compressed_image_features(inputs["pixel_values"])
    tokens = model.config.image_seq_length
    assert [entry.shape[0] for entry in features.pooler_output] == [4 * tokens, tokens]
    torch.testing.assert_close(features.pooler_output[0], per_view[:4].flatten(0, 1))
    torch.testing.assert_close(features.pooler_output[1], per_view[4])
    with pytest.raises(ValueError, match="needs image_sizes"):
        model.get_image_features(inputs["pixel_values"])
    with pytest.raises(ValueError, match="image_sizes give 5 views"):
        model.get_image_features(inputs["pixel_values"][:4], image_sizes=inputs["image_sizes"])


@torch.no_grad()
def test_outputs_carry_the_image_encoder_output_and_accept_it_back(tiny):
    """As transformers' multimodal outputs: `image_outputs` is `get_image_features`' output, and passing it back as
    `mm_encoder_outputs={"image": ...}` instead of the images gives the same logits (encode once, ask many times)."""
    _, model, _, inputs, labels = tiny
    output = model(**inputs, labels=labels)
    assert isinstance(output.image_outputs, BaseModelOutputWithPooling)
    assert len(output.image_outputs.pooler_output) == 1
    encoded = model.get_image_features(**image_inputs(model, inputs))
    text = {name: value for name, value in inputs.items() if name not in image_inputs(model, inputs)}
    reused = model(**text, mm_encoder_outputs={"image": encoded}, labels=labels)
    torch.testing.assert_close(reused.logits, output.logits, atol=0, rtol=0)
    torch.testing.assert_close(reused.loss, output.loss, atol=0, rtol=0)
    with pytest.raises(ValueError, match="both pixel_values and mm_encoder_outputs"):
        model(**inputs, mm_encoder_outputs={"image": encoded})
