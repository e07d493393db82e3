"""transformers' own test mixins run against every model type (and TokenPacker-HD).

`ModelTesterMixin` (with `ConfigTester` in `test_config`) and `ProcessorTesterMixin` come from the installed
transformers version's source distribution, fetched and imported at test time by `transformers_suite` (never copied
here). The testers follow transformers' Llava tests (`LlavaVisionText2TextModelTester`,
`LlavaForConditionalGenerationModelTest`, `LlavaProcessorTest`): a 2-layer CLIP tower and a 2-layer Llama, one image
per sample, inputs as the processor writes them. One test class per variant is generated below
(`TestTokenPackerModel`, `TestTokenPackerProcessor`, ...).

`GenerationTesterMixin` is not in the sdist (see `transformers_suite`); tests/test_generation.py covers generation.

Skips carry their reason: a mixin assumption these architectures do not meet, or a test that cannot run here.
"""

from __future__ import annotations

import inspect
import re
import unittest
import warnings
from dataclasses import dataclass, field

import pytest
import torch
from parameterized import parameterized
from PIL import Image

from tests import transformers_suite
from tests.helpers import VARIANTS as CONTRACT_VARIANTS
from visual_token_compression import MODEL_TYPES
from visual_token_compression.tools.tiny import byte_tokenizer, tiny_text_config, tiny_vision_config

try:
    modeling_common = transformers_suite.load("test_modeling_common")
    configuration_common = transformers_suite.load("test_configuration_common")
    processing_common = transformers_suite.load("test_processing_common")
except transformers_suite.SuiteUnavailable as error:
    # Reported by a failing test (end of this module) rather than a collection error, which would stop the run.
    SUITE_ERROR: str | None = str(error)
else:
    SUITE_ERROR = None


@dataclass(frozen=True)
class Variant:
    name: str  # the generated classes are Test<name>Model and Test<name>Processor
    model_type: str
    config_kwargs: dict = field(default_factory=dict)
    # (height, width) of the tester's images: for TokenPacker-HD a 1 x 2 tile grid plus the global view.
    image_size: tuple[int, int] = (32, 32)


def mixin_variant(model_type: str, config_kwargs: dict) -> Variant:
    """A contract variant (tests/helpers.py), named after its config class (TokenPacker, QueCC, VoCoLlama, ...),
    TokenPacker-HD as TokenPackerHD with images of a 1 x 2 tile grid."""
    name = MODEL_TYPES[model_type].config_class.__name__.removesuffix("Config")
    if config_kwargs.get("patch_num"):
        return Variant(f"{name}HD", model_type, config_kwargs, image_size=(32, 64))
    return Variant(name, model_type, config_kwargs)


VARIANTS = [mixin_variant(model_type, config_kwargs) for model_type, config_kwargs in CONTRACT_VARIANTS]


# The mixin picks the inputs and checks of a class by its name in transformers' static `*_MAPPING_NAMES` (labels
# for image-text-to-text heads, no loss expected from base models, ...). Our classes are registered with the Auto
# classes at run time (`AutoModel.register`, ...), which does not touch those tables, so the mixin module gets its
# own copies with our names added, as the registrations in `auto.py` pair them. The Auto classes are untouched.
def _register_model_names():
    for mapping_name, attribute in (
        ("MODEL_MAPPING_NAMES", "model_class"),
        ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "for_generation_class"),
    ):
        names = dict(getattr(modeling_common, mapping_name))
        for model_type, entry in MODEL_TYPES.items():
            names.setdefault(model_type, getattr(entry, attribute).__name__)
        setattr(modeling_common, mapping_name, names)


TEXT_VOCAB_SIZE = 512


def tiny_tokenizer(variant: Variant):
    """`tiny.byte_tokenizer` with `<image>` and the method's own special tokens (VoCo-LLaMA's `<voco>`)."""
    special_tokens = MODEL_TYPES[variant.model_type].special_tokens.values()
    return byte_tokenizer(extra_special_tokens=("<image>", *special_tokens))


def _sub_config_dict(config) -> dict:
    values = config.to_diff_dict()
    values.pop("transformers_version", None)
    return values


def tiny_config_kwargs(variant: Variant, tokenizer) -> dict:
    """Init arguments of the variant's config, with sub-configs as dicts (as Llava's tester passes them)."""
    entry = MODEL_TYPES[variant.model_type]
    # An embedding matrix larger than the tokenizer, as many released LLMs have: the placeholders (ids 260, 261) stay
    # below the `vocab_size - 16` the mixin's resize tests clamp every input id to (Llava's tester has its image
    # token at id 0 for the same reason).
    text_config = _sub_config_dict(tiny_text_config(vocab_size=TEXT_VOCAB_SIZE))
    text_config["pad_token_id"] = tokenizer.pad_token_id
    kwargs = {
        # 2 layers: `test_num_layers_is_small` holds every tower of a tester to at most 2.
        "vision_config": _sub_config_dict(tiny_vision_config(num_hidden_layers=2)),
        "text_config": text_config,
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        **entry.tiny_config_kwargs,
        **variant.config_kwargs,
    }
    for field_name, token in entry.special_tokens.items():
        kwargs[field_name] = tokenizer.convert_tokens_to_ids(token)
    return kwargs


def tiny_processor(variant: Variant, tokenizer=None):
    tokenizer = tokenizer or tiny_tokenizer(variant)
    entry = MODEL_TYPES[variant.model_type]
    config = entry.config_class(**tiny_config_kwargs(variant, tokenizer))
    return entry.processor_class.from_config(config, tokenizer)


def random_images(count: int, size: tuple[int, int]) -> list[Image.Image]:
    """uint8 RGB images from the mixin's own random source (`floats_tensor`), so its seeding applies."""
    height, width = size
    pixels = modeling_common.floats_tensor([count, height, width, 3], scale=255.0).to(torch.uint8)
    return [Image.fromarray(image.numpy()) for image in pixels]


class CompressedVLMModelTester:
    """Tiny configs and a batch as the processor writes it, after `LlavaVisionText2TextModelTester`.

    Every sample is one image followed by `text_length` random letters, so all rows have the same length and no
    padding: `seq_length` is the full sequence, image placeholders (and TokenPacker-HD's separators, VoCo-LLaMA's
    `<voco>` tokens) included. The batch holds every processor output (QueCC's `query_input_ids` /
    `query_attention_mask` too).
    """

    def __init__(
        self,
        parent,
        variant: Variant,
        batch_size: int = 3,
        text_length: int = 7,
        is_training: bool = True,
        image_size: tuple[int, int] | None = None,
    ):
        self.parent = parent
        self.variant = variant
        self.image_shape = image_size or variant.image_size  # (height, width); `image_size` is the tower's
        self.batch_size = batch_size
        self.text_length = text_length
        self.is_training = is_training
        self.tokenizer = tiny_tokenizer(variant)
        config_kwargs = tiny_config_kwargs(variant, self.tokenizer)
        self.config_kwargs = config_kwargs
        self.vision_config = config_kwargs["vision_config"]
        self.text_config = config_kwargs["text_config"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.vocab_size = self.text_config["vocab_size"]
        self.pad_token_id = self.tokenizer.pad_token_id
        self.image_size = self.vision_config["image_size"]
        self.patch_size = self.vision_config["patch_size"]
        self.num_channels = self.vision_config["num_channels"]
        self.processor = MODEL_TYPES[variant.model_type].processor_class.from_config(self.get_config(), self.tokenizer)
        sample = self.processor(images=self._images()[:1], text=self.processor.image_token + "x" * text_length)
        self.seq_length = len(sample["input_ids"][0])
        self.encoder_seq_length = self.seq_length
        if "video" in MODEL_TYPES[variant.model_type].model_class.input_modalities:
            self.video_model_tester = VideoInputsTester(self)

    def _letters(self) -> list[str]:
        letters = modeling_common.ids_tensor([self.batch_size, self.text_length], 26).tolist()
        return ["".join(chr(ord("a") + i) for i in row) for row in letters]

    def get_config(self):
        return MODEL_TYPES[self.variant.model_type].config_class(**self.config_kwargs)

    def _images(self) -> list[Image.Image]:
        return random_images(self.batch_size, self.image_shape)

    def prepare_config_and_inputs(self):
        config = self.get_config()
        texts = [self.processor.image_token + letters for letters in self._letters()]
        batch = self.processor(images=self._images(), text=texts, return_tensors="pt")
        return config, {name: value.to(modeling_common.torch_device) for name, value in batch.items()}

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()


class VideoInputsTester:
    """The mixin's `video_model_tester` for a model that takes videos (VoCo-LLaMA): every sample one clip of
    `frames` frames and random letters, as the processor writes it, for the `get_video_features` tests."""

    def __init__(self, model_tester: CompressedVLMModelTester, frames: int = 2):
        self.model_tester = model_tester
        self.frames = frames
        self.video_config = model_tester.vision_config  # the frames' tower: its layers are the expected count

    def prepare_config_and_inputs_for_common(self):
        tester = self.model_tester
        frames = random_images(tester.batch_size * self.frames, tester.image_shape)
        videos = [frames[index : index + self.frames] for index in range(0, len(frames), self.frames)]
        texts = [tester.processor.video_token + letters for letters in tester._letters()]
        batch = tester.processor(videos=videos, text=texts, return_tensors="pt")
        # The mixin calls `get_video_features` with exactly these, so only the video inputs.
        names = ("pixel_values_videos", "video_num_frames")
        return tester.get_config(), {name: batch[name].to(modeling_common.torch_device) for name in names}


# ------------------------------------------------------------------------------------------------------------------
# Tests that cannot apply are not generated (rather than generated to be skipped): a regular expression over test
# names (parametrized names included) -> reason. Besides these, every mixin test that skips itself at import time
# (hardware or packages this machine lacks: an accelerator, flash-attn, deepspeed, kernels, ...) is left out, with
# the mixin's own reason (`_deselect`).

GENERATION_MIXIN_MISSING = (
    "transformers' sdist does not ship tests/generation/test_utils.py, so these classes cannot inherit "
    "GenerationTesterMixin; tests/test_generation.py covers generation for every model type."
)

# GenerationTesterMixin was run against this library separately (testers modelled on Llava's, tiny configs of every
# type, transformers 5.23 and 5.24). Its failures are fixed, each with a test of ours (e.g. tests/test_generation.py::
# test_generate_returns_every_steps_attentions_and_hidden_states); these divergences stay, by design:
# - test_past_key_values_format (VoCo-LLaMA): after the prefill the cache holds only the VoCo columns and the text
#   after them, a VoCoCache with fewer columns than the prompt has tokens: that is the method.
# - test_assisted_decoding_* and prompt lookup (VoCo-LLaMA): refused with a clear error, since they crop rejected
#   drafts from the cache and a compressed cache has no per-token layout (test_assisted_and_prompt_lookup_decoding_
#   equal_greedy asserts the error; the other types pass).
# - rope-scaling tests: they feed random ids that include the <image> placeholder without pixel_values, which every
#   type refuses (tests/test_models.py::test_image_tokens_without_pixel_values_are_refused).
# - gradient-checkpointing tests: no gradient reaches the tower above its feature layer (never read), which the
#   check that every parameter gets a gradient does not allow (test_gradient_checkpointing_trains_like_plain_backward
#   checks the gradients that exist).
# - eager vs sdpa generation (SeTok) when no token precedes the image: the unfilled slots then make fully masked
#   rows, which the two backends fill differently (never read); elsewhere they agree to 9.5e-7.
# - GenerationMixin: each generation class lists it among its literal bases, as transformers' models do
#   (tests/test_transformers_api.py::test_generation_classes_list_generation_mixin_directly).

MODEL_SKIPS: dict[str, str] = {
    r"test_keep_in_fp32_modules.*": (
        "For models that keep modules in fp32 (`_keep_in_fp32_modules`); none here does (TokenPacker-HD's region "
        "extractor pools in fp32 inside its forward instead)."
    ),
    r"test_reverse_loading_mapping": "For models with a checkpoint key conversion mapping; these load their own keys.",
    r"test_encoder_decoder_loss_no_double_shift|test_moe_.*|test_output_router_logits_from_config": (
        "For encoder-decoder and mixture-of-experts models; these are decoders without experts."
    ),
    r"test_sliding_window_mask|test_model_rope_with_partial_rotation|test_vision_axial_rope": (
        "For attention and RoPE variants (sliding windows, partial rotation, axial vision RoPE) the testers' Llama "
        "and CLIP do not use."
    ),
    r"test_resize_position_vector_embeddings": "For models with learned position embeddings in the LLM; Llama's are rotary.",
    r"test_eager_matches_batched_and_grouped_inference_.*": (
        "For models with grouped-GEMM experts; no expert layers here."
    ),
    r"test_eager_matches_sdpa_inference_24_fp32_pad_left_output_attentions": (
        "The mixin leaves this one combination out for every model (sdpa returns no attentions); the other 23 run."
    ),
    r"test_sdpa_can_dispatch_non_composite_models": (
        "For single-model architectures; these are composite (tower + LLM): test_sdpa_can_dispatch_composite_models "
        "runs."
    ),
    r"test_generation_tester_mixin_inheritance": GENERATION_MIXIN_MISSING,
    r"test_model_rope_scaling_from_config_.*": (
        "The test feeds random ids drawn from the whole vocabulary, which include the <image> placeholder id, "
        "without pixel_values; these models refuse placeholders without images by design (a wrong prompt raises "
        "instead of running on the placeholder's embedding; tests/test_models.py::"
        "test_image_tokens_without_pixel_values_are_refused). RoPE scaling is the language model's own "
        "(LlamaModel), which transformers' Llama tests cover."
    ),
}

PROCESSOR_SKIPS: dict[str, str] = {
    r"test_replacement_offsets": (
        "For processors that expand placeholders through `ProcessorMixin.replace_image_token`; these expand them in "
        "their own `__call__` (`mm_token_type_ids` and `_get_num_multimodal_tokens`: tests/test_processor_contract.py)."
    ),
    r".*audio.*": "No processor here takes audio (each refuses it: tests/test_processor_contract.py).",
    r".*video.*": (
        "For processors with a `video_processor`: none here has one (VoCo-LLaMA reads its frames with the image "
        "processor; tests/test_voco_video_processing.py covers its videos)."
    ),
    r"test_apply_chat_template_tool_calls_no_content": "The chat templates (Vicuna v1, VoCo's) have no tool calls.",
    r"test_valid_processor_kwargs_set": (
        "The test expects a processor's kwargs class to be named `<ProcessorClass>Kwargs` in the processor's own "
        "module (transformers' one-file-per-model layout). Our processors share CompressedVLMProcessor and its "
        "CompressedVLMProcessorKwargs (processing/base.py), which is set as valid_processor_kwargs; QueCC, the one "
        "processor with kwargs of its own, defines QueCCProcessorKwargs and passes."
    ),
}

VARIANT_MODEL_SKIPS: dict[str, dict[str, str]] = {
    "VoCoLlama": {
        r"test_bc_cache_name_forward": (
            "The test reads a standard cache back; VoCo-LLaMA returns a VoCoCache (the prompt's VoCo columns only), "
            "which the test then skips. tests/test_cache_names.py checks both cache names for every type."
        ),
    },
}

VARIANT_PROCESSOR_SKIPS: dict[str, dict[str, str]] = {
    "TokenPackerHD": {
        r"test_apply_chat_template_image_.*": (
            "TokenPacker-HD's pixel_values are flat over views (each image's tiles and global view, one row each), "
            "as Qwen2-VL's are flat over patches, with `image_sizes` telling each image's views (LLaVA-NeXT's name). "
            "The test recognises a flat layout only by Qwen's `image_grid_thw` and otherwise expects one row per "
            "image; tests/test_transformers_api.py checks the per-image grouping (get_image_features)."
        ),
        r"test_tokenizer_decode_defaults": (
            "The test builds the processor from its components alone. With a TokenPacker-HD image processor, "
            "TokenPackerProcessor needs image_seq_length (the tokens of one view) at init, where it checks that the "
            "tile and row separators are single tokens; it refuses to be built without it, by design."
        ),
    },
    "VoCoLlama": {
        r"test_processor_with_multiple_inputs": (
            "The test passes videos only to processors with a `video_processor` but writes the `<video>` token into "
            "its text for every processor with a `video_token`. VoCo-LLaMA's processor takes videos without a video "
            "processor (each frame goes through the image processor, so a 1-frame video is an image and no "
            "torchvision is needed), so the text holds a `<video>` without its video, which it refuses. Images, "
            "videos and text together: test_model_input_names here and tests/test_voco_video_processing.py::"
            "test_images_and_videos_interleave_in_text_order."
        ),
    },
}


def _deselect(cls, not_applicable: dict[str, str]):
    """Leave out of `cls` the tests `not_applicable` names and those the mixin skips at import time, so that none is
    generated only to be skipped (a name set to None is no test to unittest and pytest)."""
    for name in dir(cls):
        if not name.startswith("test_"):
            continue
        skips_itself = getattr(getattr(cls, name), "__unittest_skip__", False)
        if skips_itself or any(re.fullmatch(pattern, name) for pattern in not_applicable):
            setattr(cls, name, None)
    return cls


# ------------------------------------------------------------------------------------------------------------------
# The test classes, built only once the mixins are loaded.


def _max_length_attributes(variant: Variant) -> dict:
    """The mixin's max_length defaults (117, 112, 76) fit its texts with the few image tokens of Llava's tiny
    processor; they are raised by the tokens one of its 30 x 400 test images takes here (64 placeholders for SeTok,
    66 for VoCo-LLaMA with its newline and <voco> token, 170 for TokenPacker-HD's 9 tiles and global view), so
    that padding to max_length still applies to the same text."""
    processor = tiny_processor(variant)
    image_text = processor.image_text((30, 400))
    extra = len(processor.tokenizer(image_text, add_special_tokens=False)["input_ids"])
    return {
        "images_text_kwargs_max_length": 117 + extra,
        "images_text_kwargs_override_max_length": 112 + extra,
        "images_unstructured_max_length": 76 + extra,
    }


class SingleThreaded:
    """One intra-op thread per test, restored afterwards. On these tiny models one thread is faster than two (no
    synchronisation), and a second thread spinning while other processes hold the other core made the file up to
    90 times slower (measured: test_model_outputs_equivalence 24 s -> 0.3 s)."""

    def setUp(self):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.addCleanup(torch.set_num_threads, threads)
        super().setUp()


def build_test_classes() -> dict[str, type]:
    """Test<Variant>Model (ModelTesterMixin + ConfigTester) and Test<Variant>Processor (ProcessorTesterMixin) for every
    variant, as transformers' LlavaForConditionalGenerationModelTest and LlavaProcessorTest."""
    _register_model_names()

    class CompressedVLMModelTest(modeling_common.ModelTesterMixin):
        """Not collected itself (no TestCase): one subclass per variant is generated below."""

        variant: Variant
        all_model_classes = ()
        _is_composite = True
        # Features come from the tower's hidden_states (layer -2 in every original but SeTok's), never from its
        # post_layernorm (nor, but for SeTok, its last layer): those get no gradient, by design. The mixin's check
        # that gradient checkpointing keeps the same non-zero gradients as a plain backward still runs.
        test_all_params_have_gradient = False
        # The mixin dates a model by the copyright year atop its config file and skips this test for models older than
        # 2023 or undated, as ours are (no copyright header): they are new, so it runs.
        test_can_init_all_missing_weights_before_2023 = True
        # Inputs that `test_eager_matches_sdpa_inference` passes besides `input_ids` (set per variant): the image
        # inputs that the placeholders in `input_ids` need.
        additional_model_inputs = ["pixel_values"]

        def setUp(self):
            self.model_tester = CompressedVLMModelTester(self, self.variant)
            self.config_tester = configuration_common.ConfigTester(
                self,
                config_class=MODEL_TYPES[self.variant.model_type].config_class,
                has_text_modality=False,
                common_properties=["image_token_id", "vision_feature_layer", "image_seq_length"],
            )

        def test_config(self):
            self.config_tester.run_common_tests()

        def test_config_with_tester_arguments(self):
            """`ConfigTester` again, with the tester's own non-default arguments (sub-configs aside: the tester checks
            every argument against the config's JSON, where a sub-config holds all of its defaults too)."""
            arguments = {
                name: value
                for name, value in self.model_tester.config_kwargs.items()
                if name not in ("vision_config", "text_config")
            }
            configuration_common.ConfigTester(
                self,
                config_class=MODEL_TYPES[self.variant.model_type].config_class,
                has_text_modality=False,
                common_properties=["image_token_id", "vision_feature_layer", "image_seq_length"],
                **arguments,
            ).run_common_tests()

        @parameterized.expand(modeling_common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
        def test_eager_matches_sdpa_inference(
            self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
        ):
            # The test runs a batch of 7 and pads a smaller one with random rows, whose ids hold no placeholders for
            # the images it pads `pixel_values` with: a tester batch of 7 leaves nothing to pad. It also cuts every
            # input to 7 rows, while TokenPacker-HD's `pixel_values` hold all views of the batch on dim 0: there,
            # square images (one tile each) keep one view per image. The model is TokenPacker's either way.
            square = (self.model_tester.image_size, self.model_tester.image_size)
            self.model_tester = CompressedVLMModelTester(self, self.variant, batch_size=7, image_size=square)
            modeling_common._test_eager_matches_sdpa_inference(
                self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
            )

        def _image_features_prepare_config_and_inputs(self):
            # The mixin keeps the inputs named like pixels or images, and InstructBLIP's `qformer_input_ids` (the text
            # its image encoder reads). QueCC's compressor reads its question likewise: `compressor_input_names` are
            # kept too.
            config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
            model_class = MODEL_TYPES[self.variant.model_type].model_class
            keep = ("pixel_values", "image_sizes", *model_class.compressor_input_names)
            return config, {name: value for name, value in inputs_dict.items() if name in keep}

        if hasattr(modeling_common.ModelTesterMixin, "test_bc_cache_name_forward"):  # from 5.24, with `cache`

            def test_bc_cache_name_forward(self):
                # The test expects the `past_key_values` deprecation warning, a FutureWarning, which pyproject.toml's
                # filterwarnings ignores; `catch_warnings(record=True)` keeps the filters it finds.
                with warnings.catch_warnings():
                    warnings.simplefilter("always", FutureWarning)
                    super().test_bc_cache_name_forward()

    class CompressedVLMProcessorTest(processing_common.ProcessorTesterMixin):
        """Not collected itself (no TestCase): one subclass per variant is generated below."""

        variant: Variant

        @classmethod
        def _reference_processor(cls):
            return tiny_processor(cls.variant)

        @classmethod
        def _setup_tokenizer(cls):
            return cls._reference_processor().tokenizer

        @classmethod
        def _setup_image_processor(cls):
            return cls._reference_processor().image_processor

        @classmethod
        def prepare_processor_dict(cls):
            """The processor's own init arguments besides its components, as `from_config` sets them."""
            processor = cls._reference_processor()
            parameters = inspect.signature(cls.processor_class.__init__).parameters
            own = [name for name, parameter in parameters.items() if parameter.kind is parameter.POSITIONAL_OR_KEYWORD]
            components = ("self", "chat_template", *cls.processor_class.get_attributes())
            return {name: getattr(processor, name) for name in own if name not in components}

        @classmethod
        def _setup_test_attributes(cls, processor):
            cls.image_token = processor.image_token
            if processor.video_token_id is not None:  # VoCo-LLaMA's: the mixin writes it into its texts with videos
                cls.video_token = processor.video_token

    classes = {}
    for variant in VARIANTS:
        entry = MODEL_TYPES[variant.model_type]
        for base, suffix, skips, attributes in (
            (
                CompressedVLMModelTest,
                "Model",
                {**MODEL_SKIPS, **VARIANT_MODEL_SKIPS.get(variant.name, {})},
                {
                    "all_model_classes": (entry.model_class, entry.for_generation_class),
                    "additional_model_inputs": [
                        "pixel_values",
                        "image_sizes",
                        *entry.model_class.compressor_input_names,
                    ],
                },
            ),
            (
                CompressedVLMProcessorTest,
                "Processor",
                {**PROCESSOR_SKIPS, **VARIANT_PROCESSOR_SKIPS.get(variant.name, {})},
                {"processor_class": entry.processor_class, **_max_length_attributes(variant)},
            ),
        ):
            name = f"Test{variant.name}{suffix}"
            namespace = {"variant": variant, "__module__": __name__, "__qualname__": name, **attributes}
            classes[name] = _deselect(type(name, (SingleThreaded, base, unittest.TestCase), namespace), skips)
    return classes


if SUITE_ERROR is None:
    globals().update(build_test_classes())
else:

    def test_transformers_test_mixins_are_available():
        pytest.fail(SUITE_ERROR, pytrace=False)
