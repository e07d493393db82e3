"""`vtc train`: stage 1 (compressor alignment) or stage 2 (instruction tuning) with transformers' `Trainer`; with
`--regions`, TokenPacker-HD's region stages (Osprey): stage 2 the region extractor alone, stage 3 all but the tower.

    vtc train --stage 1 --model_type tokenpacker --vision_tower openai/clip-vit-large-patch14-336 \
        --language_model lmsys/vicuna-7b-v1.5 --data blip_laion_cc_sbu_558k.json --image_folder images/ \
        --output_dir out/stage1 [any TrainingArguments]
    vtc train --stage 2 --init_from out/stage1 --data llava_v1_5_mix665k.json --image_folder images/ --output_dir out/stage2
    vtc train --stage 2 --regions --init_from out/stage1 --data regions.json --image_folder images/ --output_dir out/r2
    vtc train --stage 3 --init_from out/voco-stage2 --data video_qa.json --image_folder videos/ --output_dir out/video

Runs unchanged under `torchrun` (DDP), `accelerate launch`, DeepSpeed (`--deepspeed configs/zero3.json`) and FSDP.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from ...modeling.region_extractor import RegionExtractor
from ...registry import MODEL_TYPES
from ..building import compose_vlm, load_language_model, load_vision_tower
from .data import CompressedVLMDataCollator, load_training_dataset
from .policies import REGION_STAGE_TRAINING_DEFAULTS, STAGE_TRAINING_DEFAULTS, apply_stage, bf16_supported


@dataclass
class ModelArguments:
    stage: int = field(
        metadata={
            "help": "1: train the compressor only; 2: compressor + LLM (vision always frozen). With --regions: "
            "2: the region extractor only; 3: everything but the vision tower. Without: 3: video QA from an image "
            "checkpoint, compressor + LLM (models that take videos: VoCo-LLaMA)"
        }
    )
    regions: bool = field(
        default=False,
        metadata={
            "help": "TokenPacker-HD's region recipe (Osprey): the model gets a region extractor and <mask> if it has "
            "none, records carry a `regions` field, and --stage 2 / 3 train as in the original"
        },
    )
    model_type: str = field(default="tokenpacker", metadata={"help": f"one of {sorted(MODEL_TYPES)}"})
    vision_tower: str | None = field(default=None, metadata={"help": "CLIP/SigLIP checkpoint (folder or hub id)"})
    language_model: str | None = field(
        default=None, metadata={"help": "causal LM checkpoint, or 'smollm2' for the packaged SmolLM2-135M"}
    )
    init_from: str | None = field(default=None, metadata={"help": "a save_pretrained VLM, e.g. a stage-1 output"})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON of method config fields, e.g. '{\"scale_factor\": 3}'"}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa or flash_attention_2"})


@dataclass
class DataArguments:
    data: str = field(metadata={"help": "LLaVA JSON file, or a `datasets` name/folder"})
    eval_data: str | None = field(default=None, metadata={"help": "held-out data for eval loss (same formats)"})
    image_folder: str | None = field(default=None, metadata={"help": "root of relative image and video paths"})
    template: str | None = field(default=None, metadata={"help": "plain or vicuna_v1 (default: by stage)"})
    image_column: str = "image"
    video_column: str = field(default="video", metadata={"help": "a folder of frames, a video file or a frame list"})
    num_frames: int = field(
        default=8, metadata={"help": "frames kept per video, spread uniformly (fewer in a clip: an error); 0: all"}
    )
    conversation_column: str = "conversations"
    streaming: bool = field(default=False, metadata={"help": "stream the dataset (then --max_steps is required)"})
    on_error: str = field(default="raise", metadata={"help": "bad samples: 'raise' (stop the run) or 'skip'"})
    model_max_length: int | None = field(default=None, metadata={"help": "default: the tokenizer's"})


def with_stage_defaults(argv: list[str]) -> list[str]:
    """Add the originals' per-stage optimiser settings (and our Trainer needs) unless the user gave them."""
    stage_flag = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--stage"), None)
    stage_flag = stage_flag or next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--stage=")), None)
    table = STAGE_TRAINING_DEFAULTS
    if any(arg == "--regions" or arg.startswith("--regions=") for arg in argv):
        table = {1: STAGE_TRAINING_DEFAULTS[1], **REGION_STAGE_TRAINING_DEFAULTS}
    defaults = dict(table.get(int(stage_flag), {})) if stage_flag else {}
    defaults.update({"remove_unused_columns": False, "report_to": "none", "gradient_checkpointing": True})
    if bf16_supported():
        defaults["bf16"] = True
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    extra = [item for key, value in defaults.items() if f"--{key}" not in given for item in (f"--{key}", str(value))]
    return argv + extra


def build_model(model_args: ModelArguments):
    """(model, processor): from a saved VLM, or composed from a tower and an LLM with a fresh compressor."""
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    if model_args.init_from:
        if overrides:
            raise ValueError("--config_overrides only applies when composing a new model, not with --init_from.")
        model = AutoModelForImageTextToText.from_pretrained(
            model_args.init_from, attn_implementation=model_args.attn_implementation
        )
        processor = AutoProcessor.from_pretrained(model_args.init_from)
        if model_args.regions and not getattr(model.config, "use_region_extractor", False):
            processor = add_region_extractor(model, processor)
        return model, processor
    if not (model_args.vision_tower and model_args.language_model):
        raise ValueError("Give --init_from, or both --vision_tower and --language_model.")
    if model_args.regions:
        # Osprey's TokenPacker-HD starts from 9 tiles (osprey-tokenpacker-hd-stage2-patch9).
        overrides = {"use_region_extractor": True, "patch_num": 9, **overrides}
    language_model, tokenizer = load_language_model(model_args.language_model)
    return compose_vlm(
        model_args.model_type,
        load_vision_tower(model_args.vision_tower),
        language_model,
        tokenizer,
        attn_implementation=model_args.attn_implementation,
        **overrides,
    )


def add_region_extractor(model, processor):
    """A TokenPacker-HD model from stage 1 made a region model, as the original's stage 2 starts: a fresh region
    extractor (normal(0, initializer_range) weights, zero biases, as transformers initialises the original's) and
    `<mask>` added to the tokenizer with a new embedding row at the mean. Returns the matching processor."""
    config = model.config
    if config.model_type != "tokenpacker" or config.patch_num is None:
        raise ValueError(
            f"--regions needs a TokenPacker-HD model (model_type tokenpacker with patch_num), got {config.model_type} "
            f"with patch_num {getattr(config, 'patch_num', None)}."
        )
    tokenizer = processor.tokenizer
    if "<mask>" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["<mask>"], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config.use_region_extractor = True
    config.mask_token_id = tokenizer.convert_tokens_to_ids("<mask>")
    compressor = model.model.compressor
    compressor.region_extractor = RegionExtractor(config).to(compressor.query_proj.weight)
    for layer in compressor.region_extractor.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=config.text_config.initializer_range)
            torch.nn.init.zeros_(layer.bias)
    kwargs = {"tile_separator": processor.tile_separator, "row_separator": processor.row_separator}
    return type(processor).from_config(config, tokenizer, image_processor=processor.image_processor, **kwargs)


def train(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> Trainer:
    resume = training_args.resume_from_checkpoint
    if resume == "last":
        resume = get_last_checkpoint(training_args.output_dir)
        if resume is None:
            raise FileNotFoundError(f"No checkpoint-* folder to resume from in {training_args.output_dir}.")
    output = Path(training_args.output_dir)
    if resume is None and output.is_dir() and any(output.iterdir()):
        raise FileExistsError(
            f"{output} is not empty: resume with --resume_from_checkpoint last, or choose a new --output_dir."
        )
    if training_args.gradient_checkpointing and training_args.gradient_checkpointing_kwargs is None:
        # Non-reentrant checkpointing needs no input gradients, so frozen embeddings (stage 1) work as is.
        training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}

    set_seed(training_args.seed)  # the fresh compressor's init, before Trainer seeds the run itself
    model, processor = build_model(model_args)
    apply_stage(model, model_args.stage, regions=model_args.regions)
    dataset = load_training_dataset(
        data_args.data,
        data_args.image_column,
        data_args.conversation_column,
        streaming=data_args.streaming,
        video_column=data_args.video_column,
    )
    collator = CompressedVLMDataCollator(
        processor,
        template=data_args.template or ("plain" if model_args.stage == 1 else "vicuna_v1"),
        model_max_length=data_args.model_max_length,
        image_folder=data_args.image_folder,
        on_error=data_args.on_error,
        num_frames=data_args.num_frames or None,
    )
    eval_dataset = None
    if data_args.eval_data:
        eval_dataset = load_training_dataset(
            data_args.eval_data,
            data_args.image_column,
            data_args.conversation_column,
            video_column=data_args.video_column,
        )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, eval_dataset=eval_dataset, data_collator=collator
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    return trainer


def main(argv: list[str] | None = None) -> Trainer:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        with_stage_defaults(list(sys.argv[1:] if argv is None else argv))
    )
    return train(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
