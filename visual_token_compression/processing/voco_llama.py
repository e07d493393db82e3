"""VoCo-LLaMA's processor: LLaVA-1.5's 576 placeholders per image, then a newline and the `<voco>` tokens."""

from __future__ import annotations

from .base import CompressedVLMProcessor

VOCO_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant of the image. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# The original's prompt (train_compress.py / model_vqa_loader.py): the Vicuna v1 conversation with the VoCo system
# prompt, every image and every newline removed, and "<image>\n" put in front of everything, before the system
# prompt (after BOS). The processor turns each "<image>" into "<image>"*576 + "\n" + "<voco>"*k, which gives the
# original "<s><image>\n<voco><voco>\nSYSTEM USER: ... ASSISTANT:". Answers are marked as in `VICUNA_V1`.
VOCO_VICUNA_V1 = (
    "{%- set system = '" + VOCO_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join(' ') -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content | replace('<image>', '') | replace('\\n', '') -}}"
    "{%- else -%}"
    "{%- for item in content if item['type'] == 'text' -%}{{- item['text'] | replace('\\n', '') -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{- bos_token or '' -}}"
    "{%- for message in messages if message['content'] is not string -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
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

    Args:
        voco_token: the VoCo token string, a special token of the tokenizer.
        num_voco_tokens: VoCo tokens per image (the model config's `num_voco_tokens`).
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
        **kwargs,
    ):
        self.voco_token = voco_token
        self.num_voco_tokens = num_voco_tokens
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
        if self.voco_token_id == self.image_token_id:
            raise ValueError(f"{image_token!r} and {voco_token!r} share the id {self.voco_token_id}.")

    @classmethod
    def from_config(cls, config, tokenizer, image_processor=None, **kwargs):
        """Adds `<voco>` to the tokenizer when it lacks it (as the original training did) and checks that its id is
        the model's `voco_token_id`."""
        voco_token = kwargs.pop("voco_token", "<voco>")
        if voco_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([voco_token], special_tokens=True)
        voco_token_id = tokenizer.convert_tokens_to_ids(voco_token)
        if voco_token_id != config.voco_token_id:
            raise ValueError(
                f"The tokenizer's {voco_token!r} has id {voco_token_id} but the model's voco_token_id is "
                f"{config.voco_token_id}; build the config from this tokenizer."
            )
        return super().from_config(
            config,
            tokenizer,
            image_processor=image_processor,
            voco_token=voco_token,
            num_voco_tokens=config.num_voco_tokens,
            **kwargs,
        )

    def __call__(self, images=None, text=None, **kwargs):
        texts = [text] if isinstance(text, str) else list(text or [])
        if any(self.voco_token in sample for sample in texts):
            raise ValueError(
                f"Write only {self.image_token!r} in the text: the processor adds the {self.voco_token!r} tokens."
            )
        return super().__call__(images=images, text=text, **kwargs)

    def image_text(self, image_size: tuple[int, int]) -> str:
        return super().image_text(image_size) + "\n" + self.voco_token * self.num_voco_tokens

    def _check_layout_kept(self, input_ids, texts: list[str]):
        super()._check_layout_kept(input_ids, texts)
        self._check_token_kept(input_ids, texts, self.voco_token, self.voco_token_id)
