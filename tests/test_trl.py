"""TRL's `SFTTrainer` on every model type: from a model object and from a saved folder, on conversations with images.

The dataset is TRL's vision-language SFT format (a `messages` column of conversations whose user turn holds an
`{"type": "image"}` item, and an `images` column); TRL's collator renders it with the processor's chat template. The
loss TRL optimises (its fused LM head, computed from the hidden states) must be the model's own loss on the batch.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import VARIANT_IDS, VARIANTS, sample_image
from visual_token_compression.tools.tiny import build_tiny

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

ANSWERS = ["A red square.", "Noise, mostly.", "Two dots and a line", "Nothing at all."]


def conversations():
    """Four conversations, each with one image (different sizes, so TokenPacker-HD tiles differently)."""
    rows = {"images": [], "messages": []}
    for seed, answer in enumerate(ANSWERS):
        rows["images"].append([sample_image(seed, size=(40, 30) if seed % 2 else (24, 50))])
        rows["messages"].append(
            [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": f"What is in picture {seed}?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ]
        )
    return datasets.Dataset.from_dict(rows)


def sft_config(tmp_path, **kwargs):
    return trl.SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        bf16=False,
        use_cpu=True,
        seed=0,
        **kwargs,
    )


def first_batch(trainer) -> dict:
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def assert_trl_loss_is_the_models_own(trainer) -> dict:
    """TRL's loss on one batch (its `compute_loss`, the fused LM head) equals `model(**batch, labels=...).loss`."""
    model = trainer.model
    batch = first_batch(trainer)
    assert (batch["labels"] != -100).any()
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch))
        own_loss = model(**batch).loss
    model.train()
    torch.testing.assert_close(trl_loss, own_loss, atol=1e-5, rtol=1e-5)
    return batch


def assert_trains(trainer):
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert result.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), trainer.state.log_history
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert any(name.startswith("model.compressor.") for name in changed), changed


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=VARIANT_IDS)
def test_sft_trainer_from_a_model_object(name, kwargs, tmp_path):
    model, processor = build_tiny(name, **kwargs)
    trainer = trl.SFTTrainer(
        model=model, args=sft_config(tmp_path), train_dataset=conversations(), processing_class=processor
    )
    batch = assert_trl_loss_is_the_models_own(trainer)
    if name == "setok":
        with torch.no_grad():
            num_tokens = model.model.get_image_features(batch["pixel_values"]).compressor_output.num_tokens
        assert (num_tokens < model.config.max_image_tokens).all(), "the test needs unfilled slots"
    assert_trains(trainer)


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=VARIANT_IDS)
def test_sft_trainer_from_a_saved_folder(name, kwargs, tmp_path):
    """`SFTTrainer(model="folder")`: TRL loads the model through the `auto_map` that `save_pretrained` writes (it
    needs one for an architecture transformers does not export) and the processor with AutoProcessor."""
    model, processor = build_tiny(name, **kwargs)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    trainer = trl.SFTTrainer(model=str(folder), args=sft_config(tmp_path), train_dataset=conversations())
    assert type(trainer.model) is type(model)
    assert type(trainer.processing_class) is type(processor)
    assert_trl_loss_is_the_models_own(trainer)
    assert_trains(trainer)


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=VARIANT_IDS)
def test_assistant_only_loss_supervises_the_answers(name, kwargs, tmp_path):
    """`assistant_only_loss=True` needs the chat template's `{% generation %}` markers: only the answers (with the
    space before them and the EOS) are supervised, and TRL's loss is still the model's own."""
    model, processor = build_tiny(name, **kwargs)
    assert "{% generation %}" in processor.chat_template, "the chat template has no generation markers"
    trainer = trl.SFTTrainer(
        model=model,
        args=sft_config(tmp_path, assistant_only_loss=True),
        train_dataset=conversations(),
        processing_class=processor,
    )
    batch = assert_trl_loss_is_the_models_own(trainer)
    tokenizer = processor.tokenizer
    for row in batch["labels"]:
        supervised = row[row != -100]
        assert tokenizer.decode(supervised, skip_special_tokens=True).strip() in ANSWERS
        assert supervised[-1] == tokenizer.eos_token_id


# --- videos (VoCo-LLaMA) ----------------------------------------------------------------------------------------------

# TRL tells a vision-language dataset by an `image` or `images` column; `{"type": "video"}` items of the messages pass
# through its collator untouched to the processor's `apply_chat_template`, which reads their frames. A `datasets`
# column keeps in-memory frames as images only with an explicit `Image()` feature (what it infers is undecoded bytes).
VIDEO_MESSAGES = datasets.List(
    {
        "role": datasets.Value("string"),
        "content": datasets.List(
            {
                "type": datasets.Value("string"),
                "text": datasets.Value("string"),
                "video": datasets.List(datasets.Image()),
            }
        ),
    }
)


def video_conversations(images_column: bool = True):
    """Four conversations, each about a clip of 2 or 3 frames (no images: the `images` column is empty lists)."""
    rows = {"messages": []}
    for seed, answer in enumerate(ANSWERS):
        clip = [sample_image(10 * seed + t, size=(24, 20)) for t in range(2 + seed % 2)]
        user = [{"type": "video", "text": None, "video": clip}, {"type": "text", "text": f"What happens {seed}?"}]
        answer_turn = [{"type": "text", "text": answer, "video": None}]
        rows["messages"].append(
            [
                {"role": "user", "content": [{"video": None, **item} for item in user]},
                {"role": "assistant", "content": answer_turn},
            ]
        )
    features = {"messages": VIDEO_MESSAGES}
    if images_column:
        rows["images"] = [[] for _ in ANSWERS]
        features["images"] = datasets.List(datasets.Image())
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


def test_sft_trainer_with_video_messages(tmp_path):
    """TRL trains on video conversations unmodified: its loss is the model's own on batches whose frames are every
    clip's, its assistant-only labels are the answers, and the compressor and the LLM learn."""
    model, processor = build_tiny("voco_llama", num_voco_tokens=2)
    args = sft_config(tmp_path, assistant_only_loss=True)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=video_conversations(), processing_class=processor)
    batch = assert_trl_loss_is_the_models_own(trainer)
    frames = batch["video_num_frames"]
    assert (
        sorted(frames.tolist()) in ([2, 2], [2, 3], [3, 3]) and batch["pixel_values_videos"].shape[0] == frames.sum()
    )
    placeholders = (batch["input_ids"] == model.config.video_token_id).sum()
    assert placeholders == frames.sum() * model.config.image_seq_length
    for row in batch["labels"]:
        supervised = row[row != -100]
        assert processor.tokenizer.decode(supervised, skip_special_tokens=True).strip() in ANSWERS
    assert_trains(trainer)


def test_video_messages_without_an_images_column_are_refused_not_trained_blind(tmp_path):
    """Without an `image(s)` column TRL takes the dataset for text: it tokenizes the chats (the processor expands each
    video) and drops the frames. The model then refuses the batch instead of training on placeholders it cannot see."""
    model, processor = build_tiny("voco_llama", num_voco_tokens=2)
    dataset = video_conversations(images_column=False)
    trainer = trl.SFTTrainer(model=model, args=sft_config(tmp_path), train_dataset=dataset, processing_class=processor)
    with pytest.raises(ValueError, match="video placeholder tokens but no pixel_values_videos"):
        trainer.train()
