"""VoCo-LLaMA's processor with videos: the frame-block layout, frame sampling, every video form, the chat template,
the pipeline's processor call, serving counts and the errors (spec voco_video.md sections 2, 5 and 7)."""

from __future__ import annotations

import jinja2
import numpy as np
import pytest
import torch
import transformers.utils
import transformers.video_utils
from PIL import Image
from transformers import pipeline
from transformers.video_utils import VideoMetadata, default_sample_indices_fn

from visual_token_compression import VoCoLlamaConfig, VoCoLlamaForConditionalGeneration, VoCoLlamaProcessor
from visual_token_compression.processing.videos import FrameSampling
from visual_token_compression.processing.voco_llama import VOCO_VIDEO_SYSTEM
from visual_token_compression.tools.tiny import byte_tokenizer, tiny_text_config, tiny_vision_config

K = 2  # VoCo tokens per frame
QUESTION = "What happens?"
TOKENS = ("<image>", "<voco>", "<video>")


def tiny_config(tokenizer) -> VoCoLlamaConfig:
    image, voco, video = tokenizer.convert_tokens_to_ids(["<image>", "<voco>", "<video>"])
    return VoCoLlamaConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(vocab_size=len(tokenizer)),
        image_token_id=image,
        voco_token_id=voco,
        video_token_id=video,
        num_voco_tokens=K,
    )


def build_processor(config, **kwargs) -> VoCoLlamaProcessor:
    return VoCoLlamaProcessor.from_config(config, byte_tokenizer(TOKENS), **kwargs)


@pytest.fixture(scope="module")
def config():
    return tiny_config(byte_tokenizer(TOKENS))


@pytest.fixture()
def processor(config):
    return build_processor(config)


def clip(num_frames: int, seed: int = 0, size=(30, 40)) -> np.ndarray:
    """(frames, height, width, 3) random uint8 pixels."""
    return np.random.default_rng(seed).integers(0, 256, (num_frames, *size, 3), dtype=np.uint8)


def frames_of(video: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(frame) for frame in video]


def frame_ids(processor) -> list[int]:
    """One frame block's ids: N `<video>` placeholders, the newline, k `<voco>` tokens."""
    text = processor.image_text((32, 32)).replace(processor.image_token, processor.video_token)
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def pixels(processor, images) -> torch.Tensor:
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


def user(*content) -> dict:
    return {"role": "user", "content": list(content)}


# --- layout -------------------------------------------------------------------------------------------------------


def test_a_video_is_one_image_block_per_frame_with_nothing_between(processor):
    video = clip(3)
    out = processor(text="<video>\nWhat?", videos=[video], return_tensors="pt")
    block = frame_ids(processor)
    assert block.count(processor.video_token_id) == processor.image_seq_length
    assert block[-K:] == [processor.voco_token_id] * K
    expected = [processor.tokenizer.bos_token_id] + block * 3
    expected += processor.tokenizer("\nWhat?", add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0].tolist() == expected
    assert out["video_num_frames"].tolist() == [3] and out["video_num_frames"].dtype == torch.int64
    # Every frame is processed exactly as an image would be.
    torch.testing.assert_close(out["pixel_values_videos"], pixels(processor, frames_of(video)), atol=0, rtol=0)
    assert "pixel_values" not in out


def test_a_one_frame_video_is_the_image_token_for_token(processor):
    frame = frames_of(clip(1))[0]
    image = processor(text="<image>\nhi", images=[frame], return_tensors="pt", return_mm_token_type_ids=True)
    video = processor(text="<video>\nhi", videos=[[frame]], return_tensors="pt", return_mm_token_type_ids=True)
    ids = video["input_ids"][0]
    is_video = ids == processor.video_token_id
    assert is_video.sum() == processor.image_seq_length
    torch.testing.assert_close(torch.where(is_video, processor.image_token_id, ids), image["input_ids"][0])
    torch.testing.assert_close(video["pixel_values_videos"], image["pixel_values"], atol=0, rtol=0)
    # The same span, marked as a video (2) instead of an image (1).
    torch.testing.assert_close(video["mm_token_type_ids"], image["mm_token_type_ids"] * 2)


def test_images_and_videos_interleave_in_text_order(processor):
    images = [frames_of(clip(1, seed=10 + i))[0] for i in range(3)]
    videos = [clip(2, seed=1), clip(4, seed=2), clip(1, seed=3)]
    texts = ["<image>\n<video>\nFirst?", "<video>\n<image>\n<image>\n<video>\nSecond?"]
    out = processor(text=texts, images=images, videos=videos, return_tensors="pt", return_mm_token_type_ids=True)
    assert out["video_num_frames"].tolist() == [2, 4, 1]
    all_frames = [frame for video in videos for frame in frames_of(video)]
    torch.testing.assert_close(out["pixel_values_videos"], pixels(processor, all_frames), atol=0, rtol=0)
    torch.testing.assert_close(out["pixel_values"], pixels(processor, images), atol=0, rtol=0)
    n, block = processor.image_seq_length, len(frame_ids(processor))
    for row, (ids, marks) in enumerate(zip(out["input_ids"], out["mm_token_type_ids"], strict=True)):
        ids, marks = ids.tolist(), marks.tolist()
        assert ids.count(processor.video_token_id) == n * [2, 5][row]
        assert ids.count(processor.image_token_id) == n * [1, 2][row]
        assert marks.count(2) == block * [2, 5][row] and marks.count(1) == block * [1, 2][row]
        # A mark covers exactly the tokens of its own medium's blocks.
        assert all(mark == 2 for token, mark in zip(ids, marks, strict=True) if token == processor.video_token_id)
        assert all(mark == 1 for token, mark in zip(ids, marks, strict=True) if token == processor.image_token_id)


@pytest.mark.parametrize(
    "form",
    ["pil_frames", "array_thwc", "tensor_tchw", "array_tchw", "list_of_arrays", "list_of_tensors"],
)
def test_every_video_form_gives_the_same_inputs(processor, form):
    video = clip(4)
    reference = processor(text="<video>\nhi", videos=[frames_of(video)], return_tensors="pt")
    given = {
        "pil_frames": frames_of(video),
        "array_thwc": video,
        "tensor_tchw": torch.from_numpy(video).permute(0, 3, 1, 2),
        "array_tchw": video.transpose(0, 3, 1, 2).copy(),  # the channel axis is read from where 3 channels are
        "list_of_arrays": list(video),
        "list_of_tensors": list(torch.from_numpy(video).permute(0, 3, 1, 2)),
    }[form]
    out = processor(text="<video>\nhi", videos=given, return_tensors="pt")  # a single video needs no list
    assert out["input_ids"].tolist() == reference["input_ids"].tolist()
    torch.testing.assert_close(out["pixel_values_videos"], reference["pixel_values_videos"], atol=0, rtol=0)


def test_input_data_format_settles_an_ambiguous_layout(processor):
    """Frames of 3 x 8 pixels with 3 channels read either way: a tensor is channels first unless told otherwise."""
    video = clip(2, size=(3, 8))  # (2, 3, 8, 3): channels last, and axis 1 also holds 3
    tensor = torch.from_numpy(video)
    declared = processor(text="<video>\nhi", videos=[tensor], input_data_format="channels_last", return_tensors="pt")
    torch.testing.assert_close(declared["pixel_values_videos"], pixels(processor, frames_of(video)), atol=0, rtol=0)
    default = processor(text="<video>\nhi", videos=[tensor], return_tensors="pt")
    as_channels_first = frames_of(video.transpose(0, 2, 3, 1))  # what the default reads: 8 x 3 frames
    torch.testing.assert_close(default["pixel_values_videos"], pixels(processor, as_channels_first), atol=0, rtol=0)


def test_pixel_kwargs_for_videos_apply_to_their_frames(processor):
    video, image = clip(2), frames_of(clip(1, seed=5))[0]
    unscaled = processor.image_processor(frames_of(video), do_rescale=False, return_tensors="pt")["pixel_values"]
    text = "<image>\n<video>\nhi"
    structured = processor(
        text=text, images=[image], videos=[video], videos_kwargs={"do_rescale": False}, return_tensors="pt"
    )
    torch.testing.assert_close(structured["pixel_values_videos"], unscaled, atol=0, rtol=0)
    torch.testing.assert_close(structured["pixel_values"], pixels(processor, [image]), atol=0, rtol=0)
    flat = processor(text=text, images=[image], videos=[video], do_rescale=False, return_tensors="pt")  # both media
    torch.testing.assert_close(flat["pixel_values_videos"], unscaled, atol=0, rtol=0)
    assert not torch.allclose(flat["pixel_values"], pixels(processor, [image]))


def test_frames_of_different_sizes_are_each_padded_like_images(processor):
    frames = [frames_of(clip(1, seed=0, size=(20, 50)))[0], frames_of(clip(1, seed=1, size=(60, 30)))[0]]
    out = processor(text="<video>\nhi", videos=[frames], return_tensors="pt")
    torch.testing.assert_close(out["pixel_values_videos"], pixels(processor, frames), atol=0, rtol=0)


# --- frame sampling -----------------------------------------------------------------------------------------------


def test_uniform_sampling_is_transformers_rule():
    """The same indices as transformers 5.x's `default_sample_indices_fn`, for every count a 40-frame clip allows."""
    sampling = FrameSampling(do_sample_frames=True, num_frames=None, fps=None, max_num_frames=None)
    for total in range(1, 41):
        for num_frames in range(1, total + 1):
            ours = FrameSampling(True, num_frames, None, None).indices(0, total, None)
            theirs = default_sample_indices_fn(VideoMetadata(total_num_frames=total), num_frames=num_frames)
            assert ours.tolist() == theirs.tolist(), (total, num_frames)
        assert sampling.indices(0, total, None).tolist() == list(range(total))
    ours = FrameSampling(True, None, 2, None).indices(0, 40, 8.0)
    theirs = default_sample_indices_fn(VideoMetadata(total_num_frames=40, fps=8.0), fps=2)
    assert ours.tolist() == theirs.tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]


@pytest.mark.parametrize(
    "kwargs, kept",
    [
        ({}, list(range(10))),  # no num_frames / fps: nothing is sampled
        ({"do_sample_frames": True}, list(range(10))),  # sampling with neither keeps every frame
        ({"do_sample_frames": False}, list(range(10))),
        ({"num_frames": 4}, [0, 2, 5, 7]),  # do_sample_frames defaults to True with num_frames
        ({"num_frames": 4, "do_sample_frames": True}, [0, 2, 5, 7]),
        ({"fps": 2, "video_metadata": {"fps": 5}}, [0, 2, 5, 7]),  # 10 frames at 5 fps = 2 s -> 4 frames
        ({"videos_kwargs": {"num_frames": 3}}, [0, 3, 6]),  # structured, as transformers' processors take it
    ],
)
def test_frame_sampling_kwargs(processor, kwargs, kept):
    video = clip(10)
    out = processor(text="<video>\nhi", videos=[video], return_tensors="pt", return_metadata=True, **kwargs)
    assert out["video_num_frames"].tolist() == [len(kept)]
    assert out["video_metadata"][0].frames_indices == kept
    torch.testing.assert_close(out["pixel_values_videos"], pixels(processor, frames_of(video[kept])), atol=0, rtol=0)
    assert out["input_ids"][0].tolist().count(processor.voco_token_id) == K * len(kept)


def test_each_video_is_sampled_on_its_own(processor):
    out = processor(
        text=["<video>\na", "<video>\nb"],
        videos=[clip(8), clip(3, seed=1)],
        num_frames=2,
        video_metadata=[{"fps": 4}, None],
        return_tensors="pt",
        return_metadata=True,
    )
    assert out["video_num_frames"].tolist() == [2, 2]
    assert [metadata.frames_indices for metadata in out["video_metadata"]] == [[0, 4], [0, 1]]
    assert out["video_metadata"][0].fps == 4


# --- video files (transformers' load_video) ------------------------------------------------------------------------

DECODER_LIBRARIES = ("is_av_available", "is_decord_available", "is_cv2_available", "is_torchcodec_available")


def test_a_video_file_without_a_decoder_raises_transformers_error(processor, tmp_path, monkeypatch):
    """No decoding library (av, decord, opencv, torchcodec) is a dependency: transformers' own error says what to
    install. The libraries are made unavailable here, so the test holds where one happens to be installed."""
    for name in DECODER_LIBRARIES:
        monkeypatch.setattr(transformers.utils, name, lambda: False)
        monkeypatch.setattr(transformers.video_utils, name, lambda: False)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(ImportError, match="backend=pyav"):
        processor(text="<video>\nhi", videos=[str(path)])
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        processor(text="<video>\nhi", videos=[str(tmp_path / "missing.mp4")])


def test_a_video_file_is_decoded_by_load_video_with_our_sampling(processor, tmp_path, npy_decoder):
    video = clip(30)
    np.save(tmp_path / "clip.npy", video)
    from_file = processor(text="<video>\nhi", videos=[str(tmp_path / "clip.npy")], num_frames=4, return_tensors="pt")
    in_memory = processor(text="<video>\nhi", videos=[video], num_frames=4, return_tensors="pt")
    assert npy_decoder == [[0, 7, 15, 22]]
    assert from_file["input_ids"].tolist() == in_memory["input_ids"].tolist()
    torch.testing.assert_close(from_file["pixel_values_videos"], in_memory["pixel_values_videos"], atol=0, rtol=0)
    out = processor(text="<video>\nhi", videos=[tmp_path / "clip.npy"], fps=1, return_metadata=True)  # 3 s at 1 fps
    assert out["video_num_frames"] == [3] and out["video_metadata"][0].fps == 10.0
    with pytest.raises(ValueError, match="video 0 is a file, whose metadata is read from it"):
        processor(text="<video>\nhi", videos=[str(tmp_path / "clip.npy")], video_metadata={"fps": 30})


def test_a_long_file_is_refused_before_decoding(config, tmp_path, npy_decoder):
    np.save(tmp_path / "clip.npy", clip(30))
    processor = build_processor(config, max_num_frames=8)
    with pytest.raises(ValueError, match="video 0 has 30 frames after sampling, more than max_num_frames=8"):
        processor(text="<video>\nhi", videos=[str(tmp_path / "clip.npy")])
    assert npy_decoder == []  # the sampler refused before any frame was decoded
    assert processor(text="<video>\nhi", videos=[str(tmp_path / "clip.npy")], num_frames=8)["video_num_frames"] == [8]


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, videos, kwargs, message",
    [
        ("<video>\nhi", [clip(0)], {}, "video 0 has no frames"),
        ("<video>\na <video>\nb", [clip(2), torch.zeros(0, 3, 8, 8, dtype=torch.uint8)], {}, "video 1 has no frames"),
        ("<video>\nhi", [clip(5)], {"num_frames": 6}, "num_frames=6 is more than the 5 frames of video 0"),
        ("<video>\nhi", [clip(5)], {"fps": 20, "video_metadata": {"fps": 10}}, "fps=20 asks for 10 frames"),
        ("<video>\nhi", [clip(5)], {"num_frames": 2, "fps": 1}, "mutually exclusive"),
        ("<video>\nhi", [clip(5)], {"num_frames": 2, "do_sample_frames": False}, "do_sample_frames=False"),
        ("<video>\nhi", [clip(5)], {"fps": 1}, "needs its own frame rate"),
        ("<video>\nhi", [clip(2), clip(2)], {}, "holds 1 '<video>' tokens but 2 videos"),
        ("<video>\n<video>\nhi", [clip(2)], {}, "holds 2 '<video>' tokens but 1 videos"),
        ("<video>\nhi", None, {}, "holds 1 '<video>' tokens but 0 videos"),
        ("<video><video>\nhi", [clip(2), clip(2)], {}, "two '<video>' tokens with nothing between them"),
        ("<video><voco>\nhi", [clip(2)], {}, "adds the '<voco>' tokens"),
        ("<video>\nhi", [clip(2).astype(np.float32)], {}, "must hold uint8 pixels"),
        ("<video>\nhi", [clip(2)[..., :2]], {}, "no axis of"),
        ("<video>\nhi", [clip(2)], {"video_metadata": [{"fps": 1}, {"fps": 2}]}, "2 video_metadata entries for 1"),
        ("<video>\nhi", [clip(2)], {"video_metadata": {"total_num_frames": 3}}, "says total_num_frames=3"),
    ],
)
def test_bad_videos_are_refused(processor, text, videos, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(text=text, videos=videos, **kwargs)


def test_more_frames_than_max_num_frames_is_refused_after_sampling(config):
    processor = build_processor(config, max_num_frames=4)
    with pytest.raises(ValueError, match=r"more than max_num_frames=4: sample fewer with num_frames= or fps="):
        processor(text="<video>\nhi", videos=[clip(5)])
    assert processor(text="<video>\nhi", videos=[clip(5)], num_frames=4)["video_num_frames"] == [4]
    with pytest.raises(ValueError, match="max_num_frames must be at least 1"):
        build_processor(config, max_num_frames=0)


def test_truncation_through_a_frame_block_is_refused(processor):
    n, block = processor.image_seq_length, len(frame_ids(processor))
    # BOS, frame 1, then 3 of frame 2's placeholders.
    with pytest.raises(ValueError, match=f"truncation kept {n + 3} of its {2 * n} '<video>' tokens"):
        processor(text="<video>\nhi", videos=[clip(2)], truncation=True, max_length=1 + block + 3)
    # BOS and the frame without its last <voco>.
    with pytest.raises(ValueError, match="truncation kept 1 of its 2 '<voco>' tokens"):
        processor(text="<video>", videos=[clip(1)], truncation=True, max_length=block)
    kept = processor(text="<video>\nhi", videos=[clip(2)], truncation=True, max_length=1 + 2 * block + 3)
    assert len(kept["input_ids"][0]) == 1 + 2 * block + 3


# --- serving counts -----------------------------------------------------------------------------------------------


def test_num_multimodal_tokens_match_the_marked_spans(processor):
    """vLLM's helper: each video's whole span (placeholders, newlines, <voco>) from (num_frames, height, width)."""
    videos = [clip(3), clip(1, size=(50, 20)), clip(5)]
    texts = ["A <video>\nB <video>\nC", "<video>\nD"]
    out = processor(text=texts, videos=videos, return_mm_token_type_ids=True, return_tensors="pt")
    sizes = [(len(video), *video.shape[1:3]) for video in videos]
    counted = processor._get_num_multimodal_tokens(video_sizes=sizes, image_sizes=[(30, 40)])
    assert counted.num_video_tokens == [len(frame_ids(processor)) * len(video) for video in videos]
    assert (out["mm_token_type_ids"] == 2).sum(-1).tolist() == [
        sum(counted.num_video_tokens[:2]),
        counted.num_video_tokens[2],
    ]
    assert counted.num_image_tokens == [len(frame_ids(processor))] and counted.num_image_patches == [1]


# --- saving, loading and from_config ------------------------------------------------------------------------------


def test_video_settings_are_saved(config, tmp_path):
    processor = build_processor(config, max_num_frames=12)
    processor.save_pretrained(tmp_path)
    reloaded = VoCoLlamaProcessor.from_pretrained(tmp_path)
    assert (reloaded.video_token, reloaded.video_token_id, reloaded.max_num_frames) == (
        "<video>",
        config.video_token_id,
        12,
    )
    video = clip(3)
    assert (
        reloaded(text="<video>\nhi", videos=[video])["input_ids"]
        == processor(text="<video>\nhi", videos=[video])["input_ids"]
    )
    assert not hasattr(reloaded, "video_processor"), "frames go through the image processor: nothing new is saved"


def test_from_config_adds_the_video_token_and_checks_its_id():
    tokenizer = byte_tokenizer(("<image>",))
    config = VoCoLlamaConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(vocab_size=len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    processor = VoCoLlamaProcessor.from_config(config, tokenizer)  # a model without videos: the token is still added
    assert processor.video_token_id == tokenizer.convert_tokens_to_ids("<video>") == config.voco_token_id + 1
    config.video_token_id = processor.video_token_id + 5
    with pytest.raises(
        ValueError,
        match=rf"'<video>' has id {processor.video_token_id} but the model's video_token_id is {config.video_token_id}",
    ):
        VoCoLlamaProcessor.from_config(config, tokenizer)


def test_a_processor_saved_before_videos_loads_and_refuses_them(config, tmp_path):
    """A folder whose tokenizer has no `<video>` (saved before video support) keeps working for images and names
    the fix for videos."""
    tokenizer = byte_tokenizer(("<image>", "<voco>"))
    processor = VoCoLlamaProcessor(
        image_processor=build_processor(config).image_processor,
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
        num_voco_tokens=K,
    )
    processor.save_pretrained(tmp_path)
    reloaded = VoCoLlamaProcessor.from_pretrained(tmp_path)
    assert reloaded.video_token_id is None
    image = frames_of(clip(1))[0]
    assert (
        reloaded(text="<image>\nhi", images=[image])["input_ids"]
        == processor(text="<image>\nhi", images=[image])["input_ids"]
    )
    with pytest.raises(ValueError, match=r"no '<video>' token .*\.from_config\(config, tokenizer\)"):
        reloaded(text="<video>\nhi", videos=[clip(2)])


# --- chat template ------------------------------------------------------------------------------------------------


def test_chat_template_renders_videos_with_images_in_content_order(processor):
    chat = [user({"type": "video"}, {"type": "image"}, {"type": "video"}, {"type": "text", "text": "Compare\nthem."})]
    assert processor.apply_chat_template(chat, add_generation_prompt=True) == (
        f"<s><video>\n<image>\n<video>\n{VOCO_VIDEO_SYSTEM} USER: Comparethem. ASSISTANT:"
    )
    with_system = [
        {"role": "system", "content": "Answer in one word."},
        user({"type": "video"}, {"type": "text", "text": "Q?"}),
    ]
    assert processor.apply_chat_template(with_system, add_generation_prompt=True) == (
        "<s><video>\nAnswer in one word. USER: Q? ASSISTANT:"
    )
    # Without a video the image prompt is unchanged (tests/test_voco_llama.py::test_chat_template_is_the_original_prompt).
    assert "assistant of the image." in processor.apply_chat_template([user({"type": "image"})])


@pytest.mark.parametrize("key", ["video", "path"])
def test_apply_chat_template_tokenizes_videos_with_sampling(processor, key, tmp_path, npy_decoder):
    video = clip(12)
    np.save(tmp_path / "clip.npy", video)
    value = video if key == "video" else str(tmp_path / "clip.npy")
    chat = [user({"type": "video", key: value}, {"type": "text", "text": QUESTION})]
    out = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", num_frames=4
    )
    rendered = processor.apply_chat_template(chat, add_generation_prompt=True)
    expected = processor(text=rendered, videos=[video[[0, 3, 6, 9]]], return_tensors="pt")
    assert out["input_ids"].tolist() == expected["input_ids"].tolist()
    assert out["video_num_frames"].tolist() == [4]
    torch.testing.assert_close(out["pixel_values_videos"], expected["pixel_values_videos"], atol=0, rtol=0)


def test_apply_chat_template_batches_chats_with_and_without_videos(processor):
    videos = [clip(2), clip(3, seed=1)]
    chats = [
        [user({"type": "text", "text": "No video here."})],
        [
            user(
                {"type": "video", "video": videos[0]},
                {"type": "image", "image": frames_of(clip(1))[0]},
                {"type": "text", "text": "A?"},
            )
        ],
        [user({"type": "video", "video": frames_of(videos[1])}, {"type": "text", "text": "B?"})],
    ]
    out = processor.apply_chat_template(
        chats,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    assert out["video_num_frames"].tolist() == [2, 3]
    counts = (out["input_ids"] == processor.video_token_id).sum(-1).tolist()
    assert counts == [0, 2 * processor.image_seq_length, 3 * processor.image_seq_length]


def test_assistant_mask_marks_the_answer_after_a_video(processor):
    chat = [
        user({"type": "video", "video": clip(3)}, {"type": "text", "text": QUESTION}),
        {"role": "assistant", "content": [{"type": "text", "text": "A ball rolls."}]},
    ]
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    answer = [token for token, marked in zip(ids, mask, strict=True) if marked]
    assert processor.tokenizer.decode(answer) == f" A ball rolls.{processor.tokenizer.eos_token}"


def test_audio_is_refused_by_processor_and_template(processor):
    chat = [user({"type": "audio", "audio": np.zeros(16000, dtype=np.float32)}, {"type": "text", "text": "Hi?"})]
    with pytest.raises(ValueError, match="takes no audio"):
        processor(text="hi", audio=np.zeros(16000, dtype=np.float32))
    for tokenize in (False, True):
        with pytest.raises(ValueError, match="takes no audio"):
            processor.apply_chat_template(chat, tokenize=tokenize)
    with pytest.raises(jinja2.exceptions.TemplateError, match="no audio input"):
        processor.tokenizer.apply_chat_template(chat, chat_template=processor.chat_template, tokenize=False)


# --- pipeline -----------------------------------------------------------------------------------------------------


def test_pipeline_chats_reach_videos(processor, config):
    """`pipeline("image-text-to-text")` sends a chat through `apply_chat_template` with its `processor_kwargs`: the
    inputs it would give `generate` hold the sampled frames. (Generation itself is the model's test.)"""
    from transformers.utils.chat_template_utils import Chat

    torch.manual_seed(0)
    generator = pipeline(
        "image-text-to-text", model=VoCoLlamaForConditionalGeneration(config).eval(), processor=processor
    )
    video = clip(10)
    chat = [user({"type": "video", "video": video}, {"type": "text", "text": QUESTION})]
    preprocess_params, _, _ = generator._sanitize_parameters(processor_kwargs={"num_frames": 5})
    inputs = generator.preprocess(Chat(chat), **preprocess_params)
    rendered = processor.apply_chat_template(chat, add_generation_prompt=True)
    expected = processor(text=rendered, videos=[video], num_frames=5, return_tensors="pt")
    assert inputs["video_num_frames"].tolist() == [5]
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()
    torch.testing.assert_close(inputs["pixel_values_videos"], expected["pixel_values_videos"], atol=0, rtol=0)
