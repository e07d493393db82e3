"""TokenPacker-HD with Osprey's region extractor: config, region inputs, the `<mask>` tokens, generation, pipeline,
conversion, training data and stages. Parity with the original is in tests/parity/test_tokenpacker_osprey_parity.py."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from tests.helpers import ORIGINAL_COMPRESSOR_NAMES, sample_image
from visual_token_compression import TokenPackerConfig
from visual_token_compression.modeling.region_extractor import RegionExtractor
from visual_token_compression.processing.regions import region_mask
from visual_token_compression.tools.building import compose_vlm, load_language_model, load_vision_tower
from visual_token_compression.tools.tiny import build_tiny, tiny_text_config, tiny_vision_config
from visual_token_compression.tools.training.policies import apply_stage
from visual_token_compression.tools.training.region_data import load_region_dataset, region_records

REGIONS = {"patch_num": 9, "use_region_extractor": True}
TINY_HEADS = {"compressor_head_dim": 8}  # the 32-wide tiny tower
IMAGE = sample_image(0, size=(40, 30))  # 30 x 40: a 2x3 grid of 32 px tiles (+ the global view) on the tiny tower
QUESTION = "<image>\nWhat is region1<mask> next to region2<mask>?"
TWO_REGIONS = [[[2, 3, 20, 25], [20.5, 1.5, 39, 12]]]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("tokenpacker", **REGIONS)


def test_defaults_reproduce_the_released_extractor():
    """Layers 12/16/22/23 of the 1024-wide tower, out_dim the LLM's 4096: the original's 8,396,800 parameters under
    its names, so its weights load by a prefix rename."""
    config = TokenPackerConfig(**REGIONS)
    assert config.region_feature_layers == [12, 16, 22, 23]
    extractor = RegionExtractor(config)
    assert sum(parameter.numel() for parameter in extractor.parameters()) == 8_396_800
    expected = {f"res_layers.{k}.{p}" for k in range(4) for p in ("weight", "bias")}
    assert set(extractor.state_dict()) == expected | {"feat_linear.weight", "feat_linear.bias"}
    assert extractor.feat_linear.weight.shape == (4096, 1024)


def test_widths_and_layers_come_from_the_configs():
    config = TokenPackerConfig(
        vision_config=tiny_vision_config(num_hidden_layers=6),
        text_config=tiny_text_config().to_dict() | {"hidden_size": 48},
        region_feature_layers=[2, 5],
        **REGIONS,
        **TINY_HEADS,
    )
    extractor = RegionExtractor(config)
    assert len(extractor.res_layers) == 2 and extractor.res_layers[0].weight.shape == (32, 32)
    assert extractor.feat_linear.weight.shape == (48, 32)
    default = TokenPackerConfig(vision_config=tiny_vision_config(num_hidden_layers=6), **REGIONS, **TINY_HEADS)
    assert default.region_feature_layers == [3, 4, 5]  # the original's relative depths, as the multi-level default


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"use_region_extractor": True}, "needs TokenPacker-HD"),
        ({**REGIONS, "region_feature_layers": [30]}, "Region feature layer 30 does not exist"),
        ({**REGIONS, "region_feature_layers": []}, "is empty"),
        ({**REGIONS, "image_token_id": 7, "mask_token_id": 7}, "mask_token_id=7"),
    ],
)
def test_bad_region_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenPackerConfig(**kwargs)


def test_mask_is_a_real_token_with_its_own_embedding_row(tiny):
    model, processor = tiny
    mask_id = model.config.mask_token_id
    assert processor.tokenizer.convert_tokens_to_ids("<mask>") == processor.mask_token_id == mask_id
    assert mask_id != model.config.image_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) == mask_id + 1
    ids = processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS)["input_ids"][0]
    assert ids.count(mask_id) == 2


def test_plain_tokenpacker_has_no_region_extractor_nor_mask():
    model, processor = build_tiny("tokenpacker", patch_num=9)
    assert not hasattr(model.model.compressor, "region_extractor") and processor.mask_token_id is None
    inputs = processor(images=IMAGE, text="<image>\nhi", return_tensors="pt")
    with pytest.raises(ValueError, match="no region extractor"):
        model(**inputs, region_masks=[torch.zeros(0, 64, 96, dtype=torch.bool)])


def square(height=30, width=40, top=5, left=10, size=12) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_every_region_form_gives_the_same_mask():
    """A binary mask as an array, a tensor, a PIL image, an image file; the same square as a box, COCO polygons
    and RLE (compressed and not), alone or as a record's region dict."""
    from pycocotools import mask as coco

    expected = square()
    rle = coco.encode(np.asfortranarray(expected.astype(np.uint8)))
    flat = expected.flatten(order="F").astype(int)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, flat, -1]) != 0)).tolist()
    uncompressed = {"size": [30, 40], "counts": runs if flat[0] == 0 else [0, *runs]}
    polygon = [[10, 5, 22, 5, 22, 17, 10, 17]]
    forms = [
        expected,
        torch.from_numpy(expected),
        Image.fromarray(expected.astype(np.uint8) * 255),
        [10, 5, 22, 17],
        {"box": [10, 5, 22, 17]},
        {"counts": rle["counts"].decode(), "size": [30, 40]},
        {"rle": {"counts": rle["counts"].decode(), "size": [30, 40]}},
        uncompressed,
        {"segmentation": polygon},
        {"polygons": polygon},
        {"mask": expected.astype(np.uint8)},
    ]
    for form in forms:
        got = region_mask(form, 30, 40)
        if isinstance(form, dict) and ("segmentation" in form or "polygons" in form):
            # pycocotools rasterises a polygon's edges inclusively: the square plus its right and bottom lines.
            assert got[5:17, 10:22].all() and got.sum() <= expected.sum() + 2 * 13, form
        else:
            assert np.array_equal(got, expected), type(form)


def test_region_mask_from_a_file(tmp_path):
    Image.fromarray(square().astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert np.array_equal(region_mask({"mask": str(tmp_path / "m.png")}, 30, 40), square())
    with pytest.raises(FileNotFoundError, match="missing.png"):
        region_mask({"mask": str(tmp_path / "missing.png")}, 30, 40)


def test_rle_and_polygons_without_pycocotools_are_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r"visual-token-compression\[regions\]"):
        region_mask([[10, 5, 22, 5, 22, 17]], 30, 40)
    assert np.array_equal(region_mask([10, 5, 22, 17], 30, 40), square())  # boxes and masks need none


@pytest.mark.parametrize(
    "region, message",
    [
        (np.ones((10, 10), bool), "does not fit the 30x40 image"),
        ([5, 5, 2, 9], "x1 < x2"),
        ({"box": [1, 2, 3, 4], "mask": np.ones((30, 40))}, "exactly one"),
        ("not a region", "Region mask file not found"),
        (3.5, "Cannot read a region"),
    ],
)
def test_bad_regions_are_clear_errors(region, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        region_mask(region, 30, 40)


def test_processor_puts_regions_on_the_image_canvas(tiny):
    """Each region is letterboxed exactly as its image (here 30x40 on a 2x3 grid of 32 px tiles: resized to 64x85
    at the top left), and `region_masks` has one (regions, 64, 96) bool tensor per image."""
    _, processor = tiny
    outputs = processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS, return_tensors="pt")
    (canvas,) = outputs["region_masks"]
    assert canvas.dtype == torch.bool and canvas.shape == (2, 64, 96)
    assert not canvas[:, :, 86:].any()  # the padding right of the 85 px letterboxed image
    scale = 64 / 30
    rows, cols = canvas[0].any(1).nonzero().flatten(), canvas[0].any(0).nonzero().flatten()
    assert abs(rows[0] - 3 * scale) <= 1 and abs(rows[-1] + 1 - 25 * scale) <= 1
    assert abs(cols[0] - 2 * scale) <= 1 and abs(cols[-1] + 1 - 20 * scale) <= 1
    numpy_outputs = processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS)
    assert isinstance(numpy_outputs["region_masks"][0], np.ndarray)
    assert np.array_equal(numpy_outputs["region_masks"][0], canvas.numpy())


@pytest.mark.parametrize(
    "text, regions, message",
    [
        (QUESTION, [[[2, 3, 20, 25]]], "Sample 0 holds 2 '<mask>' tokens but its images have 1 region masks"),
        (QUESTION, None, "holds 2 '<mask>' tokens but no region_masks were given"),
        (QUESTION, [[[2, 3, 20, 25]], [[2, 3, 20, 25]]], "one entry per image"),
        (QUESTION, [[1, 2, 20, 25]], "looks like one box"),
    ],
)
def test_processor_refuses_regions_that_do_not_match_the_text(tiny, text, regions, message):
    _, processor = tiny
    with pytest.raises((ValueError, TypeError), match=message):
        processor(images=IMAGE, text=text, region_masks=regions)


def test_regions_need_a_region_processor():
    _, processor = build_tiny("tokenpacker", patch_num=9)
    with pytest.raises(ValueError, match="need TokenPacker-HD with a region extractor"):
        processor(images=IMAGE, text="<image>\nhi", region_masks=[[[1, 1, 5, 5]]])


def test_multimodal_token_counts_are_those_of_the_images(tiny):
    """`<mask>` tokens are text the model fills: the image spans of `mm_token_type_ids` and
    `_get_num_multimodal_tokens` are the same with and without regions."""
    model, processor = tiny
    with_regions = processor(
        images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS, return_mm_token_type_ids=True, return_tensors="pt"
    )
    plain_text = QUESTION.replace("<mask>", "")
    without = processor(images=IMAGE, text=plain_text, return_mm_token_type_ids=True, return_tensors="pt")
    marks = with_regions["mm_token_type_ids"][0]
    assert int(marks.sum()) == int(without["mm_token_type_ids"][0].sum())
    assert not marks[with_regions["input_ids"][0] == model.config.mask_token_id].any()
    counts = processor._get_num_multimodal_tokens([(30, 40)])
    assert counts.num_image_tokens == [int(marks.sum())] and counts.num_image_patches == [7]


def embeddings_seen_by_the_llm(model, inputs) -> torch.Tensor:
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen[0]


def test_each_mask_token_gets_its_regions_vector_wherever_it_is(tiny):
    """`<mask>` before the image and after it: the i-th takes the i-th region's vector (the extractor's output for
    that region alone), every other position keeps its embedding."""
    model, processor = tiny
    text = "region1<mask> is where? <image>\nand region2<mask>?"
    inputs = processor(images=IMAGE, text=text, region_masks=TWO_REGIONS, return_tensors="pt")
    embeds = embeddings_seen_by_the_llm(model, inputs)
    positions = (inputs["input_ids"][0] == model.config.mask_token_id).nonzero().flatten()
    with torch.no_grad():
        features = model.model.get_image_features(
            inputs["pixel_values"], image_sizes=inputs["image_sizes"], region_masks=inputs["region_masks"]
        )
    regions = features.compressor_output.region_features[0]
    assert positions.tolist()[0] < int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    torch.testing.assert_close(embeds[0, positions], regions, rtol=0, atol=0)
    # Each vector is that region's alone: pooling one region at a time gives the same.
    for index in range(2):
        single = processor(
            images=IMAGE, text="<image>\nx<mask>", region_masks=[[TWO_REGIONS[0][index]]], return_tensors="pt"
        )
        with torch.no_grad():
            alone = model.model.get_image_features(
                single["pixel_values"], image_sizes=single["image_sizes"], region_masks=single["region_masks"]
            ).compressor_output.region_features[0]
        torch.testing.assert_close(alone[0], regions[index], rtol=0, atol=1e-6)
    text_positions = inputs["input_ids"][0] != model.config.mask_token_id
    text_positions &= inputs["input_ids"][0] != model.config.image_token_id
    expected = model.get_input_embeddings()(inputs["input_ids"])[0, text_positions]
    torch.testing.assert_close(embeds[0, text_positions], expected, rtol=0, atol=0)


def test_model_refuses_mask_counts_that_do_not_match_the_regions(tiny):
    model, processor = tiny
    inputs = processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS, return_tensors="pt")
    with pytest.raises(ValueError, match="Sample 0 holds 2 <mask> tokens but its images have 1 region masks"):
        model(**{**inputs, "region_masks": [inputs["region_masks"][0][:1]]})
    with pytest.raises(ValueError, match="Sample 0 holds 2 <mask> tokens but its images have 0 region masks"):
        model(**{key: value for key, value in inputs.items() if key != "region_masks"})
    text_only = processor.tokenizer("a region1<mask>", return_tensors="pt")
    with pytest.raises(ValueError, match="1 <mask> tokens but no image and region masks"):
        model(**text_only)
    with pytest.raises(ValueError, match=r"shape \(2, 10, 10\)"):
        model(**{**inputs, "region_masks": [torch.zeros(2, 10, 10, dtype=torch.bool)]})


def test_batches_and_beams_carry_each_samples_regions(tiny):
    """A batch of two images with different regions answers as each alone, with greedy search and with beams and
    several returned sequences (each sample's regions repeated with its rows)."""
    model, processor = tiny
    images = [IMAGE, sample_image(1, size=(70, 30))]
    texts = [QUESTION, "<image>\nDescribe region1<mask>."]
    regions = [TWO_REGIONS[0], [np.pad(square(), ((0, 0), (0, 30)))]]
    batch = processor(images=images, text=texts, region_masks=regions, return_tensors="pt", padding=True)
    for settings in ({}, {"num_beams": 2, "num_return_sequences": 2}):
        with torch.no_grad():
            together = model.generate(**batch, max_new_tokens=4, do_sample=False, **settings)
        width = batch["input_ids"].shape[1]
        copies = settings.get("num_return_sequences", 1)
        for index in range(2):
            alone_inputs = processor(
                images=images[index], text=texts[index], region_masks=[regions[index]], return_tensors="pt"
            )
            with torch.no_grad():
                alone = model.generate(**alone_inputs, max_new_tokens=4, do_sample=False, **settings)
            rows = together[index * copies : (index + 1) * copies, width:]
            assert rows.tolist() == alone[:, alone_inputs["input_ids"].shape[1] :].tolist(), (settings, index)
    # The expansion repeats the declared per-image list image by image; a list of another length is refused, not
    # truncated (`generate` refuses it earlier, when it encodes the images; this guards other callers).
    wrong = {**batch, "region_masks": [*batch["region_masks"], batch["region_masks"][0]]}
    with pytest.raises(ValueError, match="`region_masks` holds 3 entries for 2 images"):
        model._expand_inputs_for_generation(expand_size=2, **wrong)


def test_pipeline_and_chat_template_take_regions(tiny):
    """`pipeline("image-text-to-text")` passes `processor_kwargs={"region_masks": [...]}` to the processor's chat
    path; the answer is generate's on the same inputs."""
    model, processor = tiny
    messages = [
        {"role": "user", "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": "What is x<mask>?"}]}
    ]
    generator = pipeline("image-text-to-text", model=model, processor=processor)
    region = [[[2, 3, 20, 25]]]
    answer = generator(
        text=messages,
        max_new_tokens=4,
        generate_kwargs={"do_sample": False},
        processor_kwargs={"region_masks": region},
    )
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"region_masks": region},
    )
    assert len(inputs["region_masks"]) == 1 and inputs["region_masks"][0].shape[0] == 1
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer[0]["generated_text"][-1]["content"] == expected


def test_bf16_model_pools_in_fp32_and_keeps_its_dtype(tiny):
    """No in-place cast: a bf16 model stays bf16 after a forward with regions, and its vectors are the fp32 pooling
    of the bf16 features (the original casts its parameters to fp32 in place)."""
    model, processor = build_tiny("tokenpacker", **REGIONS)
    model.to(torch.bfloat16)
    inputs = processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS, return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(
            inputs["pixel_values"], image_sizes=inputs["image_sizes"], region_masks=inputs["region_masks"]
        )
        model(**inputs)
    assert features.compressor_output.region_features[0].dtype == torch.float32
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_a_region_that_vanishes_on_the_patch_grid_is_named(tiny, caplog):
    """A 2 px band covers no patch centre: the original's bias-only vector, with a warning naming the region."""
    model, processor = tiny
    band = np.zeros((30, 40), dtype=bool)
    band[:, 20:21] = True
    inputs = processor(images=IMAGE, text=QUESTION, region_masks=[[square(), band]], return_tensors="pt")
    with caplog.at_level(logging.WARNING), torch.no_grad():
        features = model.model.get_image_features(
            inputs["pixel_values"], image_sizes=inputs["image_sizes"], region_masks=inputs["region_masks"]
        )
    assert "Region mask 1 of image 0 covers no patch centre" in caplog.text
    assert "Region mask 0" not in caplog.text
    extractor = model.model.compressor.region_extractor
    bias_only = extractor.feat_linear(sum(layer.bias for layer in extractor.res_layers))
    torch.testing.assert_close(features.compressor_output.region_features[0][1], bias_only, rtol=0, atol=1e-6)


def test_saved_region_model_loads_with_the_auto_classes(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.config.use_region_extractor and loaded.config.mask_token_id == model.config.mask_token_id
    assert loaded_processor.mask_token_id == processor.mask_token_id
    inputs = loaded_processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


# -- training: stages, the original datasets' records --------------------------------------------------------------


def test_region_stages_train_what_the_original_trains(tiny):
    """Stage 2 only the region extractor (TRAIN_MASK_MODULE), stage 3 everything but the tower."""
    model, _ = build_tiny("tokenpacker", **REGIONS)
    stage_2 = apply_stage(model, 2, regions=True)
    assert stage_2 and all(name.startswith("model.compressor.region_extractor.") for name in stage_2)
    stage_3 = set(apply_stage(model, 3, regions=True))
    names = {name for name, _ in model.named_parameters()}
    assert stage_3 == {name for name in names if not name.startswith("model.vision_tower.")}
    with pytest.raises(ValueError, match=r"stage must be one of \[1, 2, 3\] with --regions, not 4"):
        apply_stage(model, 4, regions=True)


def osprey_entry(**extra) -> dict:
    boxes = [[10, 10, 30, 10, 30, 30, 10, 30], [40, 5, 60, 5, 60, 25, 40, 25], [5, 40, 25, 40, 25, 60, 5, 60]]
    return {
        "file_name": "COCO_train2014_000000000009.jpg",
        "height": 80,
        "width": 80,
        "annotation": [{"segmentation": [box]} for box in boxes],
        **extra,
    }


def test_lvis_pos_neg_pairs_each_mask_with_the_region_it_names():
    """The original dropped K from `<regionK>`: here the i-th `<mask>` gets annotation K (a region asked about
    twice gets its mask twice)."""
    turns = [
        {"from": "human", "value": "Is <region2> a cat? Is <region1> a dog?"},
        {"from": "gpt", "value": "No. Yes."},
        {"from": "human", "value": "Is <region3> next to <region1>?"},
        {"from": "gpt", "value": "Yes."},
    ]
    (record,) = region_records("osprey_lvis_pos_neg", [osprey_entry(conversations=turns)])
    corners = [region["polygons"][0][:2] for region in record["regions"]]
    assert corners == [[40.0, 5.0], [10.0, 10.0], [5.0, 40.0], [10.0, 10.0]]
    assert record["conversations"][0]["value"].count("<mask>") + record["conversations"][2]["value"].count(
        "<mask>"
    ) == len(record["regions"])


def test_vcr_regions_count_from_one_in_the_list_and_the_text(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"boxes": [], "segms": [[[[1, 1], [9, 1], [9, 9]]]] * 2}))
    line = {
        "metadata_fn": "m.json",
        "img_fn": "i.jpg",
        "objects": ["person", "dog"],
        "question_orig": "Is 0 walking 1 ?",
        "answer_orig": "Yes , 0 is .",
        "rationale_orig": "1 is on a leash .",
    }
    (record,) = region_records("vcr", [line], tmp_path)
    first = record["conversations"][0]["value"]
    assert first.startswith("<image>\nThis provides an overview of the picture.\n")
    assert "region1 <mask>,region2 <mask>" in first and "person at region1 walking dog at region2" in first
    assert record["regions"][0] == {"polygons": [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0]]}
    line["question_orig"] = "Is 2 here ?"  # no object 2: the original skips the line
    assert region_records("vcr", [line], tmp_path) == []


def test_coco_regions_are_capped_and_rle_is_kept_compressed():
    """COCO keeps at most 20 regions, each answered by its category; uncompressed RLE becomes compressed."""
    annotations = [
        {"id": i, "image_id": 1, "category_id": 1 + i % 2, "segmentation": [[1, 1, 5, 1, 5, 5]]} for i in range(25)
    ]
    annotations[0]["segmentation"] = {"size": [10, 10], "counts": [5, 10, 85]}
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    (record,) = region_records("coco", coco, seed=3)
    assert len(record["regions"]) == 20 == len(record["conversations"]) // 2
    assert {turn["value"] for turn in record["conversations"][1::2]} <= {"cat", "dog"}
    rles = [region["rle"] for region in record["regions"] if "rle" in region]
    for rle in rles:
        assert isinstance(rle["counts"], str) and region_mask({"rle": rle}, 10, 10).sum() == 10


def test_region_records_load_as_a_dataset_with_mixed_region_forms(tmp_path):
    """Polygons, RLE and boxes in one `regions` column, through `datasets` (the loader's and a JSON file) unchanged."""
    turns = [{"from": "human", "value": "Q <region1>"}, {"from": "gpt", "value": "A"}]
    records = region_records("osprey_short_form", [osprey_entry(conversations=turns)])
    records.append(
        {"image": "b.jpg", "conversations": records[0]["conversations"], "regions": [{"box": [1.0, 2, 3, 4]}] * 3}
    )
    records[0]["regions"][1] = {"rle": {"size": [80, 80], "counts": "PP1"}}
    dataset = load_region_dataset("osprey_short_form", [osprey_entry(conversations=turns)])
    assert (
        dataset[0]["regions"] == region_records("osprey_short_form", [osprey_entry(conversations=turns)])[0]["regions"]
    )
    (tmp_path / "data.json").write_text(json.dumps(records))
    from visual_token_compression.tools.training.data import load_training_dataset

    loaded = load_training_dataset(str(tmp_path / "data.json"))
    assert [loaded[index]["regions"] for index in range(2)] == [record["regions"] for record in records]


# -- conversion of an original TokenPacker-HD + Osprey checkpoint --------------------------------------------------

ORIGINAL_PROJECTOR = ORIGINAL_COMPRESSOR_NAMES["tokenpacker"]  # ours -> `model.mm_projector.` (tokenpacker.md §3.1)


def osprey_checkpoint(model, vocab: int) -> dict[str, torch.Tensor]:
    """The model's weights as the original LlavaLlamaForCausalLM saves them: `mask_extractor.*` at the top level,
    the projector's packed attention, LLaMA keys, no tower, and no embedding rows past the base vocabulary."""
    original = {}
    state = model.state_dict()
    for suffix in ("weight", "bias"):
        q, k, v = (state[f"model.compressor.attn.{name}_proj.{suffix}"] for name in "qkv")
        original[f"model.mm_projector.clip_attn.in_proj_{suffix}"] = torch.cat([q, k, v])
    for key, tensor in state.items():
        if key.startswith("model.compressor.region_extractor."):
            original["mask_extractor." + key.removeprefix("model.compressor.region_extractor.")] = tensor
        elif key.startswith("model.compressor.") and ".attn.q_proj" not in key and ".attn.k_proj" not in key:
            rest = key.removeprefix("model.compressor.")
            if ".attn.v_proj" in key or rest.startswith("attn.v_proj"):
                continue
            prefix = next(p for p in ORIGINAL_PROJECTOR if rest.startswith(p))
            original["model.mm_projector." + ORIGINAL_PROJECTOR[prefix] + rest[len(prefix) :]] = tensor
        elif key.startswith("model.language_model."):
            original["model." + key.removeprefix("model.language_model.")] = tensor
        elif key == "lm_head.weight":
            original[key] = tensor
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        original[key] = original[key][:vocab].contiguous()
    return original


def test_original_osprey_checkpoint_converts_with_its_region_extractor(tmp_path):
    """`vtc convert tokenpacker` on an original TokenPacker-HD + Osprey checkpoint holding the fixture's extractor
    weights: they land under `model.compressor.region_extractor.` unchanged, `<mask>` becomes a real token with a
    row of its own (the original had none), and the converted model gives the reference model's logits."""
    from safetensors.torch import load_file

    from tests.golden import fixtures_root
    from visual_token_compression import TokenPackerForConditionalGeneration, TokenPackerProcessor
    from visual_token_compression.tools.conversion import convert_cli
    from visual_token_compression.tools.tiny import byte_tokenizer

    fixture = load_file(fixtures_root() / "tokenpacker_osprey" / "mask_extractor_narrow_1x2.safetensors")
    extractor = {key.removeprefix("weights."): value for key, value in fixture.items() if key.startswith("weights.")}
    width = extractor["feat_linear.weight"].shape[0]  # the fixture's out_dim: the LLM width here
    base = byte_tokenizer(extra_special_tokens=())
    vocab = len(base)
    config = TokenPackerConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(vocab_size=vocab + 2).to_dict() | {"hidden_size": width},
        image_token_id=vocab,
        mask_token_id=vocab + 1,
        region_feature_layers=[1, 2, 3, 4],  # the fixture's 4 levels on the 4-layer tiny tower
        **REGIONS,
        **TINY_HEADS,
    )
    torch.manual_seed(0)
    reference = TokenPackerForConditionalGeneration(config).eval()
    reference.model.compressor.region_extractor.load_state_dict(extractor)
    folder = tmp_path / "osprey-tokenpacker-hd-16token-patch9"
    folder.mkdir()
    torch.save(osprey_checkpoint(reference, vocab), folder / "pytorch_model.bin")
    base.save_pretrained(folder)
    text = config.text_config.to_dict()
    llama = {
        key: text[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    }
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlavaLlamaForCausalLM"],
                **llama,
                "num_key_value_heads": text["num_key_value_heads"],
                "head_dim": text["head_dim"],
                "vocab_size": vocab,
                "mm_hidden_size": 32,
                "mm_vision_select_layer": -2,
                "mm_vision_select_feature": "patch",
                "image_aspect_ratio": "slice",
            }
        )
    )
    tower = tmp_path / "tower"
    reference.model.vision_tower.save_pretrained(tower)
    argv = [
        "tokenpacker",
        "--checkpoint",
        str(folder),
        "--vision-tower",
        str(tower),
        "--output",
        str(tmp_path / "out"),
    ]
    layers = ["--config", "region_feature_layers=[1, 2, 3, 4]"]
    assert convert_cli([*argv, "--config", "compressor_head_dim=8", *layers]) == 0

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert model.config.use_region_extractor and model.config.patch_num == 9
    converted = model.model.compressor.region_extractor.state_dict()
    assert all(torch.equal(converted[key], value) for key, value in extractor.items())
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<mask>") == model.config.mask_token_id == processor.mask_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) > model.config.mask_token_id
    assert processor.row_separator == "<unk>"  # the released checkpoints' separator

    reference_processor = TokenPackerProcessor.from_config(
        reference.config, byte_tokenizer(extra_special_tokens=("<image>", "<mask>")), row_separator="<unk>"
    )
    inputs = processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS, return_tensors="pt")
    expected_inputs = reference_processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS, return_tensors="pt")
    assert inputs["input_ids"].tolist() == expected_inputs["input_ids"].tolist()
    with torch.no_grad():
        logits = model(**inputs).logits[..., :vocab]
        expected = reference(**expected_inputs).logits[..., :vocab]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def region_parts(tmp_path_factory):
    """Region scenes (masks as PNG files in the records' `regions`), a tiny tower and a tiny Llama on disk."""
    from visual_token_compression.tools.demo import write_parts
    from visual_token_compression.tools.training.synthetic_regions import make_region_dataset

    root = tmp_path_factory.mktemp("region_parts")
    data = make_region_dataset(root / "data", num_train=6, num_test=2, seed=1)
    tower, llm = write_parts(root / "parts", "tiny", data)
    return root, data, tower, llm


def train_flags(data: dict, output, *extra: str) -> list[str]:
    return [
        "--data",
        str(data["questions"]),
        "--image_folder",
        str(data["images"]),
        "--output_dir",
        str(output),
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "2",
        "--use_cpu",
        "True",
        "--disable_tqdm",
        "True",
        "--learning_rate",
        "1e-2",
        *extra,
    ]


def test_vtc_train_region_stage_3_composes_a_region_model(region_parts):
    """`--regions` composes TokenPacker-HD (9 tiles) with a region extractor and `<mask>`, reads the records'
    `regions` (mask files under --image_folder) and trains everything but the tower."""
    from visual_token_compression.tools.training.train import main as train_main

    root, data, tower, llm = region_parts
    composed = ["--vision_tower", tower, "--language_model", llm, "--config_overrides", '{"compressor_head_dim": 8}']
    trainer = train_main(["--stage", "3", "--regions", *composed, *train_flags(data, root / "stage3")])
    model = trainer.model
    assert model.config.use_region_extractor and model.config.patch_num == 9
    assert trainer.args.learning_rate == 1e-2 and trainer.state.global_step == 2
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert any(name.startswith("model.compressor.region_extractor.") for name in trainable)
    assert not any(name.startswith("model.vision_tower.") for name in trainable)
    processor = AutoProcessor.from_pretrained(root / "stage3")
    assert processor.mask_token_id == model.config.mask_token_id


def test_vtc_train_region_stage_2_adds_the_extractor_and_trains_only_it(region_parts):
    """From a TokenPacker-HD model without regions (a stage-1 output): `--regions --stage 2` adds the extractor and
    `<mask>`, takes the original's lr 5e-4 by default, and changes the region extractor's weights alone."""
    from visual_token_compression.tools.training.train import main as train_main

    root, data, tower, llm = region_parts
    composed = root / "hd"
    language_model, tokenizer = load_language_model(llm)
    model, processor = compose_vlm("tokenpacker", load_vision_tower(tower), language_model, tokenizer, patch_num=9,
                                   compressor_head_dim=8)  # fmt: skip
    model.save_pretrained(composed)
    processor.save_pretrained(composed)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    flags = train_flags(data, root / "stage2")
    flags.remove("--learning_rate")
    flags.remove("1e-2")
    trainer = train_main(["--stage", "2", "--regions", "--init_from", str(composed), *flags])
    assert trainer.args.learning_rate == 5e-4
    after = trainer.model.state_dict()
    changed = {name for name, tensor in after.items() if name not in before or not torch.equal(before[name], tensor)}
    assert changed and all(
        name.startswith("model.compressor.region_extractor.") or "embed_tokens" in name or name == "lm_head.weight"
        for name in changed
    ), changed
    # The embeddings grew by <mask>'s row and nothing else of them moved.
    rows = before["model.language_model.embed_tokens.weight"].shape[0]
    assert torch.equal(
        after["model.language_model.embed_tokens.weight"][:rows], before["model.language_model.embed_tokens.weight"]
    )
    assert trainer.model.config.mask_token_id == rows


def test_region_flops_formula_matches_the_flop_counter(tiny):
    """`vtc bench`'s TokenPacker formula with region masks: tower + compressor with its region extractor + LLM of a
    real prefill, counted op by op (the masks' bilinear resize is no matrix product, so neither counts it)."""
    from visual_token_compression.tools.benchmarks import flops
    from visual_token_compression.tools.benchmarks.measure import counted_flops

    model, processor = tiny
    inputs = processor(images=IMAGE, text=QUESTION, region_masks=TWO_REGIONS, return_tensors="pt")
    counts = counted_flops(lambda: model(**inputs, logits_to_keep=1))
    config = model.config
    compressor = flops.tokenpacker_flops(config, inputs)
    assert flops.region_extractor_flops(config, inputs) > 0
    vision = flops.clip_vision_flops(config.vision_config, views=inputs["pixel_values"].shape[0])
    assert counts["Global"] == vision + compressor + flops.llm_flops(config.text_config, inputs["input_ids"].shape[1])
    # The model calls the region extractor itself (a submodule of the compressor, run by `compress`), so the counter
    # books it apart from the compressor's own forward.
    by_module = {name.removeprefix("TokenPackerForConditionalGeneration."): count for name, count in counts.items()}
    assert by_module["model.compressor"] + by_module["model.compressor.region_extractor"] == compressor


def test_bench_has_a_region_row_against_hd_without_regions():
    """The tokenpacker sweep measures the first HD image with region masks too, next to the same image without."""
    import dataclasses

    from visual_token_compression.tools.benchmarks.presets import PRESETS
    from visual_token_compression.tools.benchmarks.runner import Benchmark, variants

    rows, _ = variants(PRESETS["tiny"])
    (region_row,) = [row for row in rows if row.regions]
    plain = [row for row in rows if row.image_size == region_row.image_size and not row.regions]
    assert region_row.config_kwargs["use_region_extractor"] and plain
    preset = dataclasses.replace(PRESETS["tiny"], repeats=1, decode_repeats=1, new_tokens=2)
    measured = Benchmark(preset).run(measure_memory=False, progress=False, only={region_row.label, plain[0].label})
    by_label = {row["label"]: row for row in measured}
    with_regions, without = by_label[region_row.label], by_label[plain[0].label]
    assert with_regions["visual_tokens"] == without["visual_tokens"]
    assert with_regions["prefill_tokens"] > without["prefill_tokens"]
    assert with_regions["flops_compressor"] > without["flops_compressor"]
