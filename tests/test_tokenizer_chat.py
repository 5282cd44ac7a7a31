"""Chat templates: our renderings against transformers' Jinja rendering of the models' own template programs."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokfixtures import train_byte_level  # noqa: E402

from minillama.errors import TokenizerError  # noqa: E402
from minillama.tokenizer import ChatTemplate, load_tokenizer  # noqa: E402

# The template programs as the models ship them in tokenizer_config.json.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_NO_SYSTEM = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ZEPHYR = (  # TinyLlama-1.1B-Chat
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

LLAMA31 = (  # Meta-Llama-3.1-8B-Instruct, the parts a conversation without tools goes through kept verbatim
    "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n"
    "{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n"
    "{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n"
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' }}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"
)
MISTRAL = (  # Mistral-7B-Instruct-v0.1
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

TEMPLATES = {
    "llama2": (LLAMA2, "<s>", "</s>"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "qwen2": (QWEN2, None, "<|im_end|>"),
    "chatml": (CHATML_NO_SYSTEM, None, "<|im_end|>"),
    "zephyr": (ZEPHYR, "<s>", "</s>"),
    "llama3.1": (LLAMA31, "<|begin_of_text|>", "<|eot_id|>"),
    "mistral": (MISTRAL, "<s>", "</s>"),
}

ALTERNATING = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  What is 2+2?  "}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": " Hi! How can I help?\n"},
     {"role": "user", "content": "Tell me a joke.\n\n"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "U2"}, {"role": "assistant", "content": "A2"}],
]


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat")
    train_byte_level(folder, "gpt2")
    return folder


def _folder_with_template(base: Path, tmp: Path, name: str) -> Path:
    source, bos, eos = TEMPLATES[name]
    (tmp / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    config: dict[str, Any] = {"chat_template": source, "bos_token": bos, "eos_token": eos}
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp


def _jinja_render(folder: Path, name: str, messages: list[dict[str, str]], add: bool) -> str:
    transformers = pytest.importorskip("transformers")
    source, bos, eos = TEMPLATES[name]
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                              bos_token=bos, eos_token=eos)
    return hf.apply_chat_template(messages, chat_template=source, tokenize=False, add_generation_prompt=add)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_render_matches_jinja(name: str, bpe_folder: Path, tmp_path: Path) -> None:
    folder = _folder_with_template(bpe_folder, tmp_path, name)
    template = load_tokenizer(folder).chat_template
    expected_name = {"qwen2": "chatml"}.get(name, name)
    assert template.name == expected_name
    assert template.source == TEMPLATES[name][0]
    for messages in ALTERNATING:
        if name == "mistral" and messages[0]["role"] == "system":
            continue  # Mistral's own template refuses a system message; ours folds it into the first user turn
        for add in (True, False):
            assert template.render(messages, add_generation_prompt=add) == _jinja_render(folder, name, messages, add)


def test_chatml_default_system_is_read_from_the_template(bpe_folder: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(_folder_with_template(bpe_folder, tmp_path, "qwen2"))
    assert tok.chat_template.default_system == "You are a helpful assistant."
    assert tok.id_of("<|im_end|>") in tok.eos_ids


def test_llama2_refuses_roles_out_of_order() -> None:
    template = ChatTemplate.by_name("llama2")
    with pytest.raises(TokenizerError, match="alternating"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_by_name_and_detection_from_vocabulary() -> None:
    assert ChatTemplate.by_name("llama3").render([{"role": "user", "content": "hi"}]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert ChatTemplate.by_name("chatml").stop_strings == ("<|im_end|>",)
    assert ChatTemplate.detect(None, {"<|im_start|>", "<|im_end|>"}).name == "chatml"
    assert ChatTemplate.detect(None, {"<|start_header_id|>"}).name == "llama3"
    assert ChatTemplate.detect(None, {"<s>"}).name == "plain"
    assert ChatTemplate.detect("{{ something unknown }}").name == "plain"
    with pytest.raises(TokenizerError, match="unknown chat template 'vicuna'"):
        ChatTemplate.by_name("vicuna")


def test_plain_template_is_a_transcript() -> None:
    text = ChatTemplate.by_name("plain").render(
        [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    )
    assert text == "System: Be nice.\nUser: Hi\nAssistant:"


def test_bad_message_is_refused() -> None:
    with pytest.raises(TokenizerError, match="message 0"):
        ChatTemplate.by_name("chatml").render([{"content": "no role"}])


def test_rendered_llama3_prompt_encodes_with_one_bos(tmp_path: Path, bpe_folder: Path) -> None:
    """The template writes <|begin_of_text|> itself: encoding the rendering with bos=False gives exactly one BOS."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path / "l3"
    reference = train_byte_level(folder, "llama3", chat_template=LLAMA3)
    tok = load_tokenizer(folder)
    prompt = tok.chat_template.render([{"role": "user", "content": "Hi"}])
    ids = tok.encode(prompt, bos=False)
    assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id
    assert ids == reference.encode(prompt, add_special_tokens=False).ids
    assert isinstance(reference, tokenizers.Tokenizer)


def test_llama31_date_from_the_clock_when_the_template_asks() -> None:
    source = LLAMA31.replace('{%- set date_string = "26 Jul 2024" %}', '{%- set date_string = strftime_now("%d %b %Y") %}')
    template = ChatTemplate.detect(source, bos_token="<|begin_of_text|>")
    assert template.name == "llama3.1" and template.date_string is None
    import time

    assert f"Today Date: {time.strftime('%d %b %Y')}\n\n" in template.render([{"role": "user", "content": "hi"}])


def test_mistral_folds_the_system_message_into_the_first_turn() -> None:
    template = ChatTemplate.by_name("mistral")
    text = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}])
    assert text == "<s>[INST] Be brief.\n\nHi [/INST]Hello</s>[INST] Bye [/INST]"
