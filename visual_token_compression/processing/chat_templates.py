"""Chat templates saved with the processors."""

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def refuse_content(*item_types: str) -> str:
    """Jinja that raises (transformers' `raise_exception`) on a content item of any of these types, in any message:
    a template that does not render a modality must refuse it rather than drop it, or the model would answer about a
    video it never saw. Every renderer of the saved template gets the error, not only this package's processors."""
    listed = ", ".join(f"'{item_type}'" for item_type in item_types)
    return (
        "{%- for message in messages if message['content'] is not string -%}"
        f"{{%- for item in message['content'] if item['type'] in [{listed}] -%}}"
        "{{- raise_exception('This chat template has no ' + item['type'] + ' input: its model cannot see a '"
        " + item['type'] + ' item, so it is refused rather than dropped from the prompt.') -}}"
        "{%- endfor -%}"
        "{%- endfor -%}"
    )


# LLaVA's `vicuna_v1` conversation: "<s>SYSTEM USER: <image>\nQ ASSISTANT: A</s>USER: ... ASSISTANT:".
# As LLaVA's preprocessing does, the image placeholders of a turn come first, each followed by a newline. The BOS
# token is rendered, as in llava-hf's templates, so that tokenizing without special tokens (TRL) gives what inference
# sees. `{% generation %}` marks each answer with the space before it and its EOS: what the training collator
# supervises, and what `return_assistant_tokens_mask` (TRL's `assistant_only_loss`) reads. Video and audio items are
# refused: these models see images only.
VICUNA_V1 = refuse_content("video", "audio") + (
    "{%- set system = '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join(' ') -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}"
    "{%- for item in content if item['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for item in content if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{- bos_token or '' -}}"
    "{{- system + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}{{- render_content(message['content']) -}}{{- ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT:' -}}"
    "{% generation %}{{- ' ' -}}{{- render_content(message['content']) -}}{{- eos_token -}}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)
