"""Training on videos: LLaVA-format records with a `video` (a folder of frames, a video file decoded by transformers'
`load_video`, or in-memory frames), in JSON and through `datasets`; frame sampling; the errors; stage 3 (video QA from
an image checkpoint, for models that take videos); frames given as several images to a model that takes none."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from visual_token_compression.tools.tiny import build_tiny
from visual_token_compression.tools.training import (
    STAGE_TRAINABLE,
    CompressedVLMDataCollator,
    SampleError,
    apply_stage,
    load_training_dataset,
)
from visual_token_compression.tools.training.train import main as train_main
from visual_token_compression.tools.training.train import with_stage_defaults

NUM_FRAMES = 12  # frames on disk; frame t is a flat colour (20 t, 0, 255 - 20 t), so a kept frame can be identified


def frame(t: int) -> Image.Image:
    return Image.new("RGB", (20, 16), (20 * t, 0, 255 - 20 * t))


def question(answer: str = "red", placeholder: str = "<video>") -> list[dict]:
    return [{"from": "human", "value": f"{placeholder}\nWhat happens?"}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def voco():
    """A tiny VoCo-LLaMA (2 VoCo tokens per image or frame) and its processor."""
    return build_tiny("voco_llama", num_voco_tokens=2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A folder of frames (with a file that is not a frame), an empty folder, the same clip as a `.npy` "video file",
    and a LLaVA JSON file of video, image and text-only records."""
    root = tmp_path_factory.mktemp("clips")
    (root / "clip").mkdir()
    for t in range(NUM_FRAMES):  # natural order: frame_2 before frame_10
        frame(t).save(root / "clip" / f"frame_{t}.png")
    (root / "clip" / "notes.txt").write_text("not a frame")
    (root / "empty").mkdir()
    np.save(root / "clip.npy", np.stack([np.asarray(frame(t)) for t in range(NUM_FRAMES)]))
    frame(3).save(root / "image.png")
    records = [
        {"id": 0, "video": "clip", "conversations": question("up")},
        {"id": 1, "image": "image.png", "conversations": question("red", "<image>")},
        {"id": 2, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": 3, "video": "clip.npy", "conversations": question("down", "<image>")},  # LLaMA-VID writes <image>
    ]
    (root / "data.json").write_text(json.dumps(records))
    return root


def frame_index(pixel_values: torch.Tensor, processor) -> list[int]:
    """The index t of each processed frame (each a flat colour (20 t, 0, 255 - 20 t))."""
    reference = processor.image_processor([frame(t) for t in range(NUM_FRAMES)], return_tensors="pt")["pixel_values"]
    distances = torch.cdist(pixel_values.flatten(1), reference.flatten(1))
    return distances.argmin(-1).tolist()


def test_a_folder_a_file_and_frames_give_the_same_batch(voco, clips, npy_decoder):
    """The three forms of a video go through the processor as `videos=` (4 frames spread uniformly: transformers'
    rule keeps 0, 3, 6, 9), with the prompt the chat template would render, and only the answer is supervised."""
    _, processor = voco
    collator = CompressedVLMDataCollator(processor, image_folder=str(clips), num_frames=4)
    in_memory = [frame(t) for t in range(NUM_FRAMES)]
    batches = [
        collator([{"video": video, "conversations": question("up")}])
        for video in ("clip", str(clips / "clip.npy"), in_memory)
    ]
    assert npy_decoder == [[0, 3, 6, 9]]  # the file: only the kept frames were decoded
    for batch in batches:
        assert batch["video_num_frames"].tolist() == [4]
        assert frame_index(batch["pixel_values_videos"], processor) == [0, 3, 6, 9]
        assert batch["input_ids"].tolist() == batches[0]["input_ids"].tolist()
        torch.testing.assert_close(batch["pixel_values_videos"], batches[0]["pixel_values_videos"], atol=0, rtol=0)
    batch = batches[0]
    ids = batch["input_ids"][0]
    assert processor.tokenizer.decode(ids[batch["labels"][0] != -100]) == " up</s>"
    expected = processor(
        text=processor.tokenizer.decode(ids[: (ids == processor.video_token_id).nonzero()[0]])
        + "<video>\nWhat happens? ASSISTANT: up</s>",
        videos=[[frame(t) for t in (0, 3, 6, 9)]],
    )
    assert ids.tolist() == expected["input_ids"][0]


def test_videos_images_and_text_in_one_batch_from_json(voco, clips, npy_decoder):
    """`vtc train`'s data path: the JSON file through `datasets`, one batch of a folder clip, an image, text only and a
    file clip whose placeholder is LLaMA-VID's `<image>`; the model takes it and the loss reaches every part."""
    model, processor = voco
    dataset = load_training_dataset(str(clips / "data.json"))
    batch = CompressedVLMDataCollator(processor, image_folder=str(clips), num_frames=4)(list(dataset))
    assert batch["video_num_frames"].tolist() == [4, 4] and batch["pixel_values"].shape[0] == 1
    per_row = (batch["input_ids"] == processor.video_token_id).sum(-1)
    assert per_row.tolist() == [4 * model.config.image_seq_length, 0, 0, 4 * model.config.image_seq_length]
    model.train()
    model(**batch).loss.backward()
    model.zero_grad()
    model.eval()


@pytest.mark.parametrize("streaming", [False, True])
def test_any_datasets_dataset_with_a_video_column(voco, streaming):
    """Frames stored as a `datasets` sequence of images, in a column named as `--video_column` says."""
    _, processor = voco
    source = datasets.Dataset.from_dict(
        {"clip": [[frame(t) for t in range(start, start + 3)] for start in (0, 5)], "messages": [question()] * 2},
        features=datasets.Features(
            {
                "clip": datasets.List(datasets.Image()),
                "messages": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
            }
        ),
    )
    if streaming:
        source = source.to_iterable_dataset()
    dataset = load_training_dataset(source, conversation_column="messages", video_column="clip")
    batch = CompressedVLMDataCollator(processor, num_frames=None)(list(dataset))
    assert frame_index(batch["pixel_values_videos"], processor) == [0, 1, 2, 5, 6, 7]


@pytest.mark.parametrize(
    ("video", "message"),
    [
        ("gone", r"sample 4 \(no image, video gone\): unusable video: Video file not found: .*gone"),
        ("empty", r"sample 4 \(no image, video empty\): unusable video: the folder .*empty holds no frames"),
        ([], r"sample 4 \(no image, an in-memory video\): unusable video: the video has no frames"),
        ("clip", r"sample 4 .*: num_frames=16 is more than the 12 frames of video 0"),
    ],
    ids=["missing", "empty-folder", "no-frames", "too-few-frames"],
)
def test_bad_videos_name_the_sample(voco, clips, video, message):
    _, processor = voco
    collator = CompressedVLMDataCollator(processor, image_folder=str(clips), num_frames=16)
    with pytest.raises(SampleError, match=message):
        collator([{"__index__": 4, "video": video, "conversations": question()}])


def test_bad_video_samples_can_be_skipped(voco, clips, caplog):
    _, processor = voco
    collator = CompressedVLMDataCollator(processor, image_folder=str(clips), on_error="skip")
    good = {"__index__": 0, "video": "clip", "conversations": question()}
    bad = {"__index__": 1, "video": "gone", "conversations": question()}
    assert collator([good, bad])["input_ids"].shape[0] == 1
    assert "sample 1" in caplog.text and "gone" in caplog.text


def test_a_video_for_a_model_without_videos_and_placeholder_mismatches_are_refused(voco, clips):
    _, tokenpacker_processor = build_tiny("tokenpacker")
    record = {"__index__": 2, "video": "clip", "conversations": question()}
    with pytest.raises(SampleError, match=r"sample 2 .*TokenPackerProcessor takes no videos"):
        CompressedVLMDataCollator(tokenpacker_processor, image_folder=str(clips))([record])
    _, processor = voco
    collator = CompressedVLMDataCollator(processor, image_folder=str(clips))
    no_placeholder = {**record, "conversations": question(placeholder="")}
    with pytest.raises(SampleError, match=r"holds 0 '<video>' tokens but the sample has 1 video"):
        collator([no_placeholder])
    without_video = {"__index__": 2, "conversations": question()}
    with pytest.raises(SampleError, match=r"holds 1 '<video>' tokens but the sample has 0 video"):
        collator([without_video])


def test_frames_as_several_images(clips):
    """A record may hold a list of images, one `<image>` each in order (how the video demo's LLaVA baseline, which
    takes no videos, sees a clip)."""
    _, processor = build_tiny("tokenpacker")
    frames = [f"clip/frame_{t}.png" for t in (1, 4, 7)]
    record = {"image": frames, "conversations": question(placeholder="<image>" * 3)}
    batch = CompressedVLMDataCollator(processor, image_folder=str(clips))([record])
    assert batch["pixel_values"].shape[0] == 3
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.count("<image>" * 16 + "\n") == 3  # LLaVA's layout: each image first, each followed by a newline
    with pytest.raises(SampleError, match=r"\(3 images\).*holds 2 '<image>' tokens but the sample has 3 images"):
        CompressedVLMDataCollator(processor, image_folder=str(clips))(
            [{**record, "conversations": question(placeholder="<image>" * 2)}]
        )


# --- stage 3 ----------------------------------------------------------------------------------------------------------


def test_stage_3_trains_compressor_and_llm_of_a_model_that_takes_videos(voco):
    model, _ = voco
    trainable = apply_stage(model, 3)
    assert STAGE_TRAINABLE[3] == STAGE_TRAINABLE[2]
    assert trainable and all(name.startswith(STAGE_TRAINABLE[3]) for name in trainable)
    assert any(name.startswith("model.language_model.") for name in trainable)
    assert not any(name.startswith("model.vision_tower.") for name in trainable)


def test_stage_3_is_refused_for_a_model_that_takes_no_videos(voco):
    model, _ = build_tiny("tokenpacker")
    with pytest.raises(ValueError, match=r"Stage 3 continues an image model on video QA, but TokenPacker.* no videos"):
        apply_stage(model, 3)
    assert apply_stage(model, 3, regions=True)  # with --regions, stage 3 is TokenPacker-HD's region stage
    model, _ = build_tiny("voco_llama", video_token_id=None)
    with pytest.raises(ValueError, match="has no video_token_id"):
        apply_stage(model, 3)


def test_stage_3_defaults_are_the_video_recipe():
    """lr 2e-5, cosine, 3% warm-up, 1 epoch (LLaMA-VID's video stage), unless given."""
    argv = with_stage_defaults(["--stage", "3", "--learning_rate", "1e-4"])
    given = dict(zip(argv[::2], argv[1::2], strict=True))
    assert given["--learning_rate"] == "1e-4" and argv.count("--learning_rate") == 1
    assert given["--num_train_epochs"] == "1" and given["--lr_scheduler_type"] == "cosine"
    assert {"--warmup_steps", "--warmup_ratio"} & set(given)


def test_vtc_train_stage_3_continues_an_image_checkpoint_on_videos(voco, clips, npy_decoder, tmp_path):
    """`vtc train --stage 3 --init_from` a saved image model: the LLM and the projector learn, the tower does not, and
    the output folder loads with its video settings."""
    model, processor = voco
    model.save_pretrained(tmp_path / "image")
    processor.save_pretrained(tmp_path / "image")
    argv = ["--stage", "3", "--init_from", str(tmp_path / "image"), "--data", str(clips / "data.json")]
    argv += ["--image_folder", str(clips), "--num_frames", "3", "--output_dir", str(tmp_path / "video")]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--use_cpu", "True"]
    train_main([*argv, "--save_strategy", "no", "--disable_tqdm", "True"])
    before, after = (
        load_file(tmp_path / "image" / "model.safetensors"),
        load_file(tmp_path / "video" / "model.safetensors"),
    )
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(name.startswith("model.language_model.") for name in changed)
    assert any(name.startswith("model.compressor.") for name in changed)
    assert not any(name.startswith("model.vision_tower.") for name in changed)
    assert npy_decoder and all(len(indices) == 3 for indices in npy_decoder)
    saved = json.loads((tmp_path / "video" / "config.json").read_text())
    assert saved["video_token_id"] == model.config.video_token_id
