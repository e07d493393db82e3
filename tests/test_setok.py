"""SeTok's own behaviour: dynamic token counts inside fixed placeholders, clustering options, config, conversion."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import sample_image
from visual_token_compression import SeTokConfig
from visual_token_compression.compat import CACHE_NAME
from visual_token_compression.modeling import setok as setok_modeling
from visual_token_compression.modeling.setok import SeTokCache
from visual_token_compression.modeling.setok_clustering import dpc_knn_cluster, sincos_position_encoding_2d
from visual_token_compression.tools.conversion.setok import convert_state_dict
from visual_token_compression.tools.tiny import build_tiny, tiny_text_config, tiny_vision_config

PROMPT = "USER: <image>\nWhat is this? ASSISTANT:"


def images():
    """Two images that cluster into different counts with the tiny CLIP tower (checked in the tests)."""
    noise = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8")
    halves = np.zeros((32, 32, 3), dtype="uint8")
    halves[:, 16:] = 255
    return [Image.fromarray(noise), Image.fromarray(halves)]


def contract_images():
    """The images of the contract tests (tests/helpers.py): `sample_image` seeds 0 to 7, seed 2 at 24x50."""
    return [sample_image(seed, size=(24, 50) if seed == 2 else (40, 30)) for seed in range(8)]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("setok")


def exact_count_logits(model, inputs, image_features, token_mask, strict=True):
    """Per sample: the same text with exactly n placeholders (no unfilled slots, no padding), as inputs_embeds."""
    image_token_id = model.config.image_token_id
    embed = model.get_input_embeddings()
    results = []
    for ids, mask, features, filled in zip(
        inputs["input_ids"], inputs["attention_mask"], image_features, token_mask, strict=True
    ):
        filled = filled.bool()
        placeholder = ids == image_token_id
        unfilled = torch.zeros_like(placeholder)
        unfilled[placeholder] = ~filled
        kept = mask.bool() & ~unfilled
        kept_ids = ids[kept]
        embeds = embed(kept_ids)
        embeds[kept_ids == image_token_id] = features[filled].to(embeds)
        results.append((kept, embeds[None]))
    return results


def test_outputs_equal_a_sequence_with_exactly_n_tokens(tiny):
    model, processor = tiny
    inputs = processor(images=images(), text=[PROMPT, PROMPT + " Fine"], return_tensors="pt", padding_side="left")
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    labels = labels.masked_fill(inputs["attention_mask"] == 0, -100)
    # Under the standard shift the last left pad predicts a row's first token, as in any causal LM; the reference
    # sequence has no position before its first token, so that label is ignored (TRL and training pad on the right).
    first = inputs["attention_mask"].argmax(dim=1)
    labels[torch.arange(labels.shape[0]), first] = -100
    with torch.no_grad():
        image_outputs = model.model.get_image_features(inputs["pixel_values"]).compressor_output
        output = model(**inputs, labels=labels)
    counts = image_outputs.num_tokens.tolist()
    assert len(set(counts)) == 2 and all(1 < n < model.config.max_image_tokens for n in counts), counts
    assert output.image_hidden_states.shape[1] == model.config.max_image_tokens

    losses = []
    for index, (kept, embeds) in enumerate(
        exact_count_logits(model, inputs, image_outputs.image_features, image_outputs.token_mask)
    ):
        with torch.no_grad():
            reference = model(inputs_embeds=embeds, labels=labels[index][kept][None])
        torch.testing.assert_close(output.logits[index][kept], reference.logits[0], atol=1e-5, rtol=1e-5)
        losses.append((reference.loss, int((labels[index][kept][1:] != -100).sum())))
    expected_loss = sum(loss * count for loss, count in losses) / sum(count for _, count in losses)
    torch.testing.assert_close(output.loss, expected_loss, atol=1e-5, rtol=1e-5)


def test_unfilled_slots_are_masked_and_skipped_by_positions(tiny):
    """The mask and positions the language model is called with, as `prepare_language_model_inputs` makes them."""
    model, processor = tiny
    inputs = processor(images=images()[:1], text=PROMPT, return_tensors="pt")
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        output = model(**inputs)
    hook.remove()
    placeholder = inputs["input_ids"][0] == model.config.image_token_id
    n = int(output.image_outputs.compressor_output.num_tokens[0])
    unfilled = model.config.max_image_tokens - n
    # The cluster tokens fill the LAST n slots: kept tokens stay contiguous with the text after the image.
    assert seen["attention_mask"][0][placeholder].tolist() == [0] * unfilled + [1] * n
    kept = seen["attention_mask"][0].bool()
    assert seen["position_ids"][0][kept].tolist() == list(range(int(kept.sum())))
    assert (output.image_hidden_states[0, :unfilled] == 0).all()
    assert (output.image_hidden_states[0, unfilled:] != 0).any(dim=-1).all()


def test_prefill_returns_a_setok_cache_that_holds_its_unfilled_slots(tiny):
    """The state later steps need is on a typed cache: the slots the compressor left unfilled over the cached
    sequence, kept by `copy.deepcopy` and reordered with the rows (beam search, batch selection)."""
    model, processor = tiny
    inputs = processor(images=images(), text=[PROMPT, PROMPT + " Fine"], return_tensors="pt", padding_side="left")
    with torch.no_grad():
        output = model(**inputs, use_cache=True)
    cache = output[CACHE_NAME]
    assert isinstance(cache, SeTokCache)
    placeholder = inputs["input_ids"] == model.config.image_token_id
    expected = torch.zeros_like(placeholder)
    expected[placeholder] = output.image_outputs.compressor_output.token_mask.flatten() == 0
    assert torch.equal(cache.unfilled_image_slots, expected) and expected.sum(-1).tolist()[0] > 0
    assert torch.equal(copy.deepcopy(cache).unfilled_image_slots, expected)
    assert torch.equal(cache.slots_over(expected.shape[1] + 2)[:, -2:], torch.zeros(2, 2, dtype=torch.bool))
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache.unfilled_image_slots, expected.flip(0))
    cache.batch_select_indices(torch.tensor([1]))
    assert torch.equal(cache.unfilled_image_slots, expected[:1])
    assert cache.layers[0].keys.shape[0] == 1


@pytest.mark.parametrize("label_placeholders", [False, True], ids=["placeholders-ignored", "placeholders-labelled"])
def test_own_loss_is_the_standard_shifted_loss_of_its_logits(tiny, label_placeholders):
    """What TRL (and any trainer computing the loss from the logits or hidden states) optimises: the plain shifted
    next-token loss. The model's own loss must be that one, on a batch with unfilled slots and padding, both with
    the placeholders' labels ignored (this package's collator) and kept (TRL's collator without assistant masks)."""
    model, processor = tiny
    inputs = processor(images=images(), text=[PROMPT, PROMPT + " Fine"], return_tensors="pt", padding_side="right")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    if not label_placeholders:
        labels = labels.masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    with torch.no_grad():
        num_tokens = model.model.get_image_features(inputs["pixel_values"]).compressor_output.num_tokens
        output = model(**inputs, labels=labels)
    assert (num_tokens < model.config.max_image_tokens).all(), "the test needs unfilled slots"
    logits = output.logits[:, :-1].flatten(0, 1).float()
    standard = torch.nn.functional.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(output.loss, standard, atol=1e-6, rtol=1e-6)


def test_batched_generate_equals_exact_count_sequences(tiny):
    model, processor = tiny
    inputs = processor(images=images(), text=[PROMPT, PROMPT + " Fine"], return_tensors="pt", padding_side="left")
    with torch.no_grad():
        image_outputs = model.model.get_image_features(inputs["pixel_values"]).compressor_output
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new_tokens = generated[:, inputs["input_ids"].shape[1] :]
    for index, (_, embeds) in enumerate(
        exact_count_logits(model, inputs, image_outputs.image_features, image_outputs.token_mask)
    ):
        with torch.no_grad():
            reference = model.generate(inputs_embeds=embeds, max_new_tokens=6, do_sample=False)
        assert new_tokens[index].tolist() == reference[0].tolist()


def test_siglip_tower_and_save_load_roundtrip(tmp_path):
    model, processor = build_tiny("setok", vision="siglip")
    inputs = processor(images=images()[:1], text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.max_image_tokens == model.config.max_image_tokens == model.config.vision_grid_size**2
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, logits)


def test_processor_writes_max_image_tokens_placeholders():
    model, processor = build_tiny("setok", max_image_tokens=12)
    inputs = processor(images=images()[:1], text=PROMPT, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 12
    assert processor._get_num_multimodal_tokens(image_sizes=[(32, 32), (60, 20)]).num_image_tokens == [12, 12]


def test_max_image_tokens_keeps_the_highest_scoring_centers():
    x = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(0))
    full = dpc_knn_cluster(x, k=4, threshold=0.2, fallback_num_tokens=4)
    assert (full.num_tokens > 5).all()
    clamped = dpc_knn_cluster(x, k=4, threshold=0.2, fallback_num_tokens=4, max_num_tokens=5)
    assert clamped.num_tokens.tolist() == [5, 5]
    for view in range(2):
        centers = full.centers[view, : full.num_tokens[view]]
        top = centers[full.scores[view, centers].topk(5).indices].sort().values
        assert clamped.centers[view].tolist() == top.tolist()
        assert (clamped.labels[view] < 5).all() and (clamped.labels[view] >= 0).all()


def test_fallback_when_no_score_passes_and_single_token_otherwise():
    x = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(1))
    assert dpc_knn_cluster(x, k=8, threshold=100.0, fallback_num_tokens=6).num_tokens.tolist() == [6]
    # i.i.d. features: only the global density peak passes, and fallback_num_tokens is no lower bound
    x = torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(1))
    assert dpc_knn_cluster(x, k=8, threshold=0.5, fallback_num_tokens=16).num_tokens.tolist() == [1]


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_tiny_defaults_give_several_clusters_on_the_contract_images(vision):
    """The contract suite exercises unfilled-slot padding only if its images give 1 < L < max_image_tokens, and the
    batched-generation pair (seeds 1 and 2) different counts."""
    model, processor = build_tiny("setok", vision=vision)
    inputs = processor(images=contract_images(), text=["<image>"] * 8, return_tensors="pt")
    with torch.no_grad():
        counts = model.model.get_image_features(inputs["pixel_values"]).compressor_output.num_tokens.tolist()
    assert all(1 < count < model.config.max_image_tokens for count in counts), counts
    assert counts[1] != counts[2], counts


def test_clustering_runs_in_fp32_under_bf16(monkeypatch):
    """Scores are compared with an absolute threshold: the bf16 model must cluster its (bf16) features exactly as
    fp32 clustering of the same values does, or half precision would move patches between clusters."""
    clustered = []

    def recording_cluster(x, **kwargs):
        clustered.append((x, kwargs))
        return dpc_knn_cluster(x, **kwargs)

    monkeypatch.setattr(setok_modeling, "dpc_knn_cluster", recording_cluster)
    model, processor = build_tiny("setok")
    model = model.to(torch.bfloat16)
    inputs = processor(images=contract_images(), text=[PROMPT] * 8, return_tensors="pt")
    with torch.no_grad():
        outputs = model.model.get_image_features(inputs["pixel_values"]).compressor_output
        logits = model(**inputs).logits
    assert outputs.scores.dtype == torch.float32 and outputs.image_features.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()

    features, settings = clustered[0]
    assert features.dtype == torch.bfloat16
    reference = dpc_knn_cluster(features.float(), **settings)
    assert (reference.num_tokens > 1).all(), "a single cluster would make the comparison vacuous"
    assert torch.equal(outputs.num_tokens, reference.num_tokens)
    assert torch.equal(outputs.cluster_labels, reference.labels)
    assert torch.equal(outputs.scores, reference.scores)


def test_position_table_follows_the_tower_grid():
    for kind, image_size, patch_size in (("clip", 32, 4), ("siglip", 48, 4)):
        config = SeTokConfig(
            vision_config=tiny_vision_config(kind, image_size=image_size, patch_size=patch_size),
            text_config=tiny_text_config(),
            k=8,
            fallback_num_tokens=8,
        )
        assert config.max_image_tokens == (image_size // patch_size) ** 2
    table = sincos_position_encoding_2d(12, 12, 32).reshape(12, 12, 32)
    # the first 16 dims encode the row only, the next 16 the column only
    assert torch.equal(table[:, 0, :16], table[:, 7, :16]) and torch.equal(table[0, :, 16:], table[5, :, 16:])
    assert not torch.equal(table[0, 0, :16], table[1, 0, :16])


def test_stage_one_gradients_reach_the_cluster_encoders_and_projector():
    model, processor = build_tiny("setok")
    model.train()
    inputs = processor(images=images()[:1], text=PROMPT + " Fine", return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    model(**inputs, labels=labels).loss.backward()
    for name in ("inner_encoder", "inter_encoder", "out", "projector"):
        module = getattr(model.model.compressor, name)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 65}, "k=65"),
        ({"fallback_num_tokens": 0}, "fallback_num_tokens=0"),
        ({"max_image_tokens": 65}, "max_image_tokens=65"),
        ({"threshold": 0.0}, "threshold=0.0"),
        ({"compressor_num_heads": 3}, "compressor_num_heads=3"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SeTokConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config(), **kwargs)


def test_config_defaults_are_the_original_training_defaults():
    config = SeTokConfig()
    assert config.vision_config.model_type == "siglip_vision_model" and config.vision_grid_size == 27
    assert (config.threshold, config.k, config.fallback_num_tokens, config.vision_feature_layer) == (0.55, 64, 64, -1)
    assert config.max_image_tokens == 729
    assert config.token_feat_dim == config.compressor_intermediate_size == config.text_config.hidden_size


def test_conversion_refuses_unknown_keys_and_broken_aliases():
    weight = torch.ones(4)
    with pytest.raises(KeyError, match="detokenizer.mask_tokens"):
        convert_state_dict({"detokenizer.mask_tokens": weight})
    with pytest.raises(ValueError, match="should alias"):
        convert_state_dict(
            {"tokenizer.inner_encoder.norm1.weight": weight, "tokenizer.inner_encoder.layers.0.0.weight": weight * 2}
        )
    converted = convert_state_dict(
        {"model.vision_tower.inner_encoder.layers.1.1.qkv.weight": weight, "model.mm_in_projector.2.bias": weight}
    )
    assert set(converted) == {
        "model.compressor.inner_encoder.layers.1.qkv.weight",
        "model.compressor.projector.fc2.bias",
    }
