"""VisionZip's config, ordering rules, tower handling and integration (the numerics against the original are in
tests/parity)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from tests.helpers import chat, sample_image
from visual_token_compression import VisionZipConfig, VisionZipProcessor
from visual_token_compression.modeling.visionzip import VisionZipModel, cls_attention_and_keys
from visual_token_compression.tools.tiny import build_tiny, tiny_text_config, tiny_vision_config


def tiny_config(**kwargs) -> VisionZipConfig:
    """The tiny 32 x 32 / patch 4 tower: 64 patches + CLS."""
    return VisionZipConfig(
        vision_config=kwargs.pop("vision_config", tiny_vision_config()),
        text_config=tiny_text_config(),
        **{"dominant_tokens": 12, "contextual_tokens": 4, **kwargs},
    )


def test_defaults_are_the_papers_64_token_setting():
    config = VisionZipConfig()
    assert (config.dominant_tokens, config.contextual_tokens, config.image_seq_length) == (54, 10, 64)
    assert config.vision_feature_layer == -2
    assert config.vision_grid_size == 24
    assert config.multi_level_feature_layers == []


@pytest.mark.parametrize(("dominant", "contextual", "tokens"), [(54, 10, 64), (108, 20, 128), (162, 30, 192)])
def test_paper_settings(dominant, contextual, tokens):
    config = VisionZipConfig(dominant_tokens=dominant, contextual_tokens=contextual)
    assert config.image_seq_length == tokens


def test_zero_contextual_tokens_is_refused():
    with pytest.raises(ValueError, match="contextual_tokens=0 must be at least 1"):
        VisionZipConfig(contextual_tokens=0)


def test_zero_dominant_tokens_is_refused():
    with pytest.raises(ValueError, match="dominant_tokens=0 must be at least 1"):
        VisionZipConfig(dominant_tokens=0)


def test_more_tokens_than_a_view_holds_is_refused():
    with pytest.raises(ValueError, match="dominant_tokens \\+ contextual_tokens = 66 exceeds the 65 tokens"):
        tiny_config(dominant_tokens=60, contextual_tokens=6)


def test_siglip_has_no_cls_and_is_refused():
    with pytest.raises(ValueError, match="siglip_vision_model tower has no CLS token"):
        tiny_config(vision_config=tiny_vision_config("siglip"))


def test_embeddings_layer_is_refused():
    with pytest.raises(ValueError, match="vision_feature_layer=0 selects the embeddings"):
        tiny_config(vision_feature_layer=0)
    with pytest.raises(ValueError, match="vision_feature_layer=-5 selects the embeddings"):
        tiny_config(vision_feature_layer=-5)


def test_every_remaining_token_a_target_when_exactly_enough():
    """N_rem == C (the spec's edge case): step 1, no token merged, each contextual token is its target alone."""
    model = VisionZipModel(tiny_config(dominant_tokens=60, contextual_tokens=5)).eval()
    with torch.no_grad():
        hidden_states = model.vision_tower(torch.randn(2, 3, 32, 32), output_hidden_states=True).hidden_states
        states, cls_attention, keys = model.visionzip_inputs(hidden_states)
        selection = model.compressor.select(states, cls_attention, keys)
    assert selection.merged_indices.shape == (2, 0)
    targets = states.gather(1, selection.target_indices.unsqueeze(-1).expand(-1, -1, states.shape[-1]))
    torch.testing.assert_close(selection.tokens[:, 60:], targets, atol=0, rtol=0)


def synthetic_inputs():
    """One view of CLS + 8 patches (tokens 0..8) with known scores and keys.

    CLS attention ranks token 5 first and token 2 second; with D = 3 the dominant rows are CLS, 2, 5 (ascending,
    not score order). The remaining tokens 1, 3, 4, 6, 7, 8 put targets at positions 0 and 3 (step 6 // 2 = 3):
    tokens 1 and 6. Keys send 3 and 4 to token 1 and 7 and 8 to token 6.
    """
    states = torch.randn(1, 9, 32)  # the tiny tower's width, for the projector
    cls_attention = torch.tensor([[0.3, 0.05, 0.2, 0.01, 0.02, 0.3, 0.04, 0.03, 0.05]]).unsqueeze(1)
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    keys = torch.stack([a, a, b, a + 0.1 * b, 2 * a, b, b, b + 0.2 * a, 3 * b]).unsqueeze(0)
    return states, cls_attention, keys


def test_ordering_rules_and_merge_on_a_hand_built_view():
    model = VisionZipModel(tiny_config(dominant_tokens=3, contextual_tokens=2))
    states, cls_attention, keys = synthetic_inputs()
    selection = model.compressor.select(states, cls_attention, keys)
    assert selection.dominant_indices.tolist() == [[0, 2, 5]]
    assert selection.target_indices.tolist() == [[1, 6]]
    assert selection.merged_indices.tolist() == [[3, 4, 7, 8]]
    assert selection.assignment.tolist() == [[0, 0, 1, 1]]
    x = states[0]
    expected = torch.stack(
        # The target keeps weight 1 and its members' mean is added (not a mean over target and members).
        [x[0], x[2], x[5], x[1] + (x[3] + x[4]) / 2, x[6] + (x[7] + x[8]) / 2]
    )
    torch.testing.assert_close(selection.tokens[0], expected, atol=1e-6, rtol=0)
    projector = model.compressor
    projected = projector(states, cls_attention, keys)[0]
    torch.testing.assert_close(projected, projector.fc2(projector.act(projector.fc1(expected))))


def test_a_target_without_members_is_kept_alone():
    model = VisionZipModel(tiny_config(dominant_tokens=3, contextual_tokens=2))
    states, cls_attention, keys = synthetic_inputs()
    keys[0, 6] = -keys[0, 1]  # token 6 now opposes every other key: nothing joins it
    selection = model.compressor.select(states, cls_attention, keys)
    assert selection.assignment.tolist() == [[0, 0, 0, 0]]
    torch.testing.assert_close(selection.tokens[0, 4], states[0, 6], atol=0, rtol=0)


def test_exact_ties_go_to_the_lower_patch_index():
    """The original's topk leaves tie order unspecified; a stable sort makes it the same on every device."""
    model = VisionZipModel(tiny_config(dominant_tokens=3, contextual_tokens=2))
    states, _, keys = synthetic_inputs()
    cls_attention = torch.tensor([[0.5, 0.1, 0.1, 0.1, 0.1, 0.02, 0.02, 0.03, 0.03]]).unsqueeze(1)
    selection = model.compressor.select(states, cls_attention, keys)
    assert selection.dominant_indices.tolist() == [[0, 1, 2]]


def test_views_are_compressed_independently():
    model, _ = build_tiny("visionzip")
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        together = model.get_compressed_image_features(pixel_values)
        alone = torch.cat([model.get_compressed_image_features(view[None]) for view in pixel_values])
    # Same selection, so only the tower's batched vs single matrix products differ (fp32 rounding).
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_only_the_projector_is_trainable():
    """No parameter or buffer of VisionZip's own: the compressor is LLaVA's mlp2x_gelu projector, E->d->d."""
    model, _ = build_tiny("visionzip")
    config = model.config
    compressor = model.model.compressor
    vision, text = config.vision_config.hidden_size, config.text_config.hidden_size
    shapes = {name: tuple(p.shape) for name, p in compressor.named_parameters()}
    assert shapes == {
        "fc1.weight": (text, vision),
        "fc1.bias": (text,),
        "fc2.weight": (text, text),
        "fc2.bias": (text,),
    }
    assert list(compressor.buffers()) == []
    assert [name for name, _ in model.model.named_children()] == ["vision_tower", "compressor", "language_model"]


def test_eager_and_sdpa_towers_select_the_same_tokens():
    """The attention is recomputed from q/k projections, so the tower's backend (which returns weights only in
    eager) does not matter."""
    model, _ = build_tiny("visionzip")
    pixel_values = torch.randn(2, 3, 32, 32)
    selections = {}
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation({"vision_config": implementation})
        assert model.model.vision_tower.config._attn_implementation == implementation
        with torch.no_grad():
            hidden_states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
            selections[implementation] = model.model.compressor.select(*model.model.visionzip_inputs(hidden_states))
    sdpa, eager = selections["sdpa"], selections["eager"]
    for field in ("dominant_indices", "target_indices", "merged_indices", "assignment"):
        assert torch.equal(getattr(sdpa, field), getattr(eager, field)), field
    # Two backends summing in another order: fp32 rounding through 4 tiny layers.
    torch.testing.assert_close(sdpa.tokens, eager.tokens, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("num_layers", "feature_layer"), [(1, -1), (2, -2), (3, -2), (5, -2), (5, 2), (5, -1)])
def test_any_tower_depth_reads_the_layer_that_produced_the_features(num_layers, feature_layer):
    """The original hard-codes 24 layers (other depths crash); here the attention and keys of any selected layer
    equal what the eager tower computes in that layer."""
    config = tiny_config(
        vision_config=tiny_vision_config(num_hidden_layers=num_layers), vision_feature_layer=feature_layer
    )
    config.vision_config._attn_implementation = "eager"
    model = VisionZipModel(config).eval()
    layer = feature_layer % (num_layers + 1) - 1  # the encoder layer whose output is hidden_states[feature_layer]
    captured = {}
    hook = model.vision_layers[layer].self_attn.k_proj.register_forward_hook(
        lambda module, args, output: captured.setdefault("keys", output)
    )
    with torch.no_grad():
        outputs = model.vision_tower(torch.randn(2, 3, 32, 32), output_hidden_states=True, output_attentions=True)
        states, cls_attention, keys = model.visionzip_inputs(outputs.hidden_states)
    hook.remove()
    assert states is outputs.hidden_states[feature_layer]
    torch.testing.assert_close(cls_attention, outputs.attentions[layer][:, :, 0], atol=1e-6, rtol=0)
    heads = config.vision_config.num_attention_heads
    expected_keys = captured["keys"].unflatten(-1, (heads, -1)).mean(2)
    torch.testing.assert_close(keys, expected_keys, atol=1e-6, rtol=0)


def test_recomputation_is_clips_attention():
    """`cls_attention_and_keys` against a direct softmax(q k^T / sqrt(d)) over every query of one CLIP layer."""
    model = VisionZipModel(tiny_config()).eval()
    layer = model.vision_layers[0]
    inputs = torch.randn(2, 65, 32)
    with torch.no_grad():
        cls_attention, _ = cls_attention_and_keys(layer, inputs)
        hidden = layer.layer_norm1(inputs)
        q = layer.self_attn.q_proj(hidden).unflatten(-1, (4, 8)).transpose(1, 2)
        k = layer.self_attn.k_proj(hidden).unflatten(-1, (4, 8)).transpose(1, 2)
        full = (q @ k.transpose(-1, -2) / 8**0.5).softmax(-1)
    torch.testing.assert_close(cls_attention, full[:, :, 0], atol=1e-6, rtol=0)


def test_wrong_token_count_is_refused():
    model = VisionZipModel(tiny_config())
    hidden_states = tuple(torch.randn(1, 64, 32) for _ in range(5))  # no CLS
    with pytest.raises(ValueError, match="expects CLS \\+ 64 patches per view, the tower returned 64 tokens"):
        model.compress(hidden_states)


def test_a_list_of_images_gets_every_image_compressed():
    """The original skipped VisionZip for a list of images and then crashed; the processor batches any list."""
    model, processor = build_tiny("visionzip")
    images = [sample_image(1), sample_image(2, size=(20, 50))]
    prompt = chat(processor, "Same?").replace("<image>", "<image><image>", 1)
    inputs = processor(images=images, text=prompt, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * 16
    with torch.no_grad():
        output = model(**inputs)
    assert output.image_hidden_states.shape == (2, 16, model.config.text_config.hidden_size)


def test_auto_classes_round_trip_and_pipeline_generates(tmp_path):
    model, processor = build_tiny("visionzip")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded_processor) is VisionZipProcessor and loaded_processor.image_seq_length == 16
    assert (loaded.config.dominant_tokens, loaded.config.contextual_tokens) == (12, 4)
    inputs = processor(images=sample_image(3), text=chat(processor, "What?"), return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=1e-6, rtol=0)
    generator = pipeline("image-text-to-text", model=loaded, processor=loaded_processor)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": sample_image(3)}, {"type": "text", "text": "Hi"}]}
    ]
    answer = generator(text=messages, max_new_tokens=3, generate_kwargs={"do_sample": False})
    assert answer[0]["generated_text"][-1]["role"] == "assistant"
    expected = model.generate(
        **processor(images=sample_image(3), text=chat(processor, "Hi"), return_tensors="pt"),
        max_new_tokens=3,
        do_sample=False,
    )
    reply = processor.tokenizer.decode(expected[0, -3:], skip_special_tokens=True)
    assert answer[0]["generated_text"][-1]["content"] == reply


def test_a_tower_without_clips_layer_layout_is_refused():
    """Any tower with a CLS token passes the config; the model needs CLIP's projections to recompute attention."""
    config = tiny_config(
        vision_config={
            "model_type": "vit",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 4,
        }
    )
    with pytest.raises(ValueError, match="the ViTModel tower is built differently"):
        VisionZipModel(config)
