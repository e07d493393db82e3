"""VoCo-LLaMA's processor: LLaVA-1.5's 576 placeholders per image (per video frame), then a newline and the `<voco>`
tokens."""

from __future__ import annotations

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.tokenization_utils_base import TextInput
from transformers.video_utils import VideoInput

from .base import CompressedVLMProcessor
from .chat_templates import refuse_content

VOCO_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant of the image. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# The original's `voco_stg2_conv_vicuna_v1` (conversation.py), defined there but never used: it released no video code.
VOCO_VIDEO_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant of the video. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _jinja_string(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"


# The original's prompt (train_compress.py / model_vqa_loader.py): the Vicuna v1 conversation with the VoCo system
# prompt, every image and every newline removed, and "<image>\n" put in front of everything, before the system
# prompt (after BOS). The processor turns each "<image>" into "<image>"*576 + "\n" + "<voco>"*k, which gives the
# original "<s><image>\n<voco><voco>\nSYSTEM USER: ... ASSISTANT:". Answers are marked as in `VICUNA_V1`.
# Videos (not in the original code): each `{"type": "video"}` item is "<video>\n" in content order with the images,
# and with a video in the chat the default system prompt is the original's video one. Audio items are refused.
VOCO_VICUNA_V1 = refuse_content("audio") + (
    "{%- set ns = namespace(video=false) -%}"
    "{%- for message in messages if message['content'] is not string -%}"
    "{%- for item in message['content'] if item['type'] == 'video' -%}{%- set ns.video = true -%}{%- endfor -%}"
    "{%- endfor -%}"
    f"{{%- set system = {_jinja_string(VOCO_VIDEO_SYSTEM)} if ns.video else {_jinja_string(VOCO_SYSTEM)} -%}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join(' ') -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content | replace('<image>', '') | replace('<video>', '') | replace('\\n', '') -}}"
    "{%- else -%}"
    "{%- for item in content if item['type'] == 'text' -%}{{- item['text'] | replace('\\n', '') -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{- bos_token or '' -}}"
    "{%- for message in messages if message['content'] is not string -%}"
    "{%- for item in message['content'] if item['type'] in ['image', 'video'] -%}"
    "{{- '<' + item['type'] + '>\\n' -}}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{{- system | replace('\\n', '') + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}{{- render_content(message['content']) -}}{{- ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT:' -}}"
    "{% generation %}{{- ' ' -}}{{- render_content(message['content']) -}}{{- eos_token -}}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


class VoCoLlamaProcessor(CompressedVLMProcessor):
    """Writes `image_seq_length` placeholders per image followed by "\\n" and `num_voco_tokens` `<voco>` tokens,
    the original's layout. The VoCo id comes from the tokenizer; it must differ from the `<image>` id.

    A video (`videos=`, one per `<video>` of the text) becomes that block once per kept frame, with `<video>`
    placeholders and nothing between frames: each frame is compressed like an image into its own VoCo tokens.

    Args:
        voco_token: the VoCo token string, a special token of the tokenizer.
        num_voco_tokens: VoCo tokens per image and per frame (the model config's `num_voco_tokens`).
        video_token: the placeholder of a video's frames, a special token of the tokenizer (the model config's
            `video_token_id`). A tokenizer without it (a processor saved before videos) loads, and refuses videos.
        max_num_frames: the most frames a video may keep after sampling (`num_frames` / `fps`): a single prefill
            holds every frame's placeholders.
    """

    default_chat_template = VOCO_VICUNA_V1

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        image_seq_length: int | None = None,
        voco_token: str = "<voco>",
        num_voco_tokens: int = 1,
        video_token: str | None = "<video>",
        max_num_frames: int = 64,
        **kwargs,
    ):
        if max_num_frames < 1:
            raise ValueError(f"max_num_frames must be at least 1, got {max_num_frames}.")
        self.voco_token = voco_token
        self.num_voco_tokens = num_voco_tokens
        self.video_token = video_token
        self.max_num_frames = max_num_frames
        super().__init__(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            image_token=image_token,
            image_seq_length=image_seq_length,
            **kwargs,
        )
        self.voco_token_id = tokenizer.convert_tokens_to_ids(voco_token)
        if self.voco_token_id is None or self.voco_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {voco_token!r} token; add it with add_tokens(special_tokens=True)."
            )
        if self.voco_token_id in (self.image_token_id, self.video_token_id):
            raise ValueError(
                f"{voco_token!r} shares the id {self.voco_token_id} with {image_token!r} or {video_token!r}."
            )

    @classmethod
    def from_config(cls, config, tokenizer, image_processor=None, **kwargs):
        """Adds `<voco>` and `<video>` to the tokenizer when it lacks them (as the original training added `<voco>`)
        and checks that their ids are the model's `voco_token_id` and, when the model takes videos, its
        `video_token_id`."""
        voco_token = kwargs.pop("voco_token", "<voco>")
        video_token = kwargs.pop("video_token", "<video>")
        for token, field in ((voco_token, "voco_token_id"), (video_token, "video_token_id")):
            if token is None:  # video_token=None: a processor without videos
                continue
            if token not in tokenizer.get_vocab():
                tokenizer.add_tokens([token], special_tokens=True)
            token_id, expected = tokenizer.convert_tokens_to_ids(token), getattr(config, field, None)
            if expected is not None and token_id != expected:
                raise ValueError(
                    f"The tokenizer's {token!r} has id {token_id} but the model's {field} is {expected}; build the "
                    "config from this tokenizer."
                )
        return super().from_config(
            config,
            tokenizer,
            image_processor=image_processor,
            voco_token=voco_token,
            num_voco_tokens=config.num_voco_tokens,
            video_token=video_token,
            **kwargs,
        )

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        videos: VideoInput | None = None,
        **kwargs,
    ) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [])
        if any(self.voco_token in sample for sample in texts):
            raise ValueError(
                f"Write only {self.image_token!r} and {self.video_token!r} in the text: the processor adds the "
                f"{self.voco_token!r} tokens."
            )
        return super().__call__(images=images, text=text, videos=videos, **kwargs)

    def image_text(self, image_size: tuple[int, int]) -> str:
        return super().image_text(image_size) + "\n" + self.voco_token * self.num_voco_tokens

    def _check_layout_kept(self, input_ids, texts: list[str]):
        super()._check_layout_kept(input_ids, texts)
        self._check_token_kept(input_ids, texts, self.voco_token, self.voco_token_id)
