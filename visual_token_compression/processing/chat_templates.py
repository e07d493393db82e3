"""Chat templates saved with the processors."""

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# LLaVA's `vicuna_v1` conversation: "<s>SYSTEM USER: <image>\nQ ASSISTANT: A</s>USER: ... ASSISTANT:".
# As LLaVA's preprocessing does, the image placeholders of a turn come first, each followed by a newline. The BOS
# token is rendered, as in llava-hf's templates, so that tokenizing without special tokens (TRL) gives what inference
# sees. `{% generation %}` marks each answer with the space before it and its EOS: what the training collator
# supervises, and what `return_assistant_tokens_mask` (TRL's `assistant_only_loss`) reads.
VICUNA_V1 = (
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
