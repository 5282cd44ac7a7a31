"""Chat templates: turning a list of messages into the exact prompt text a chat model was trained on.

Models ship their template as a Jinja program; we do not run Jinja (it is not a dependency). Instead we recognise
which of the few families the program is (by its markers) and render that family in Python, reproducing the
program's output byte for byte; the tests hold the renderings against transformers' Jinja output.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

from ..errors import TokenizerError

TEMPLATE_NAMES = ("chatml", "llama2", "llama3", "zephyr", "plain")

# ChatML programs that insert a system turn when the conversation has none write it as a literal; the "\n" after
# "system" is either a real newline or the two characters backslash-n inside a Jinja string.
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)((?:(?!<\|im_end\|>)[^'\"{}])*)<\|im_end\|>")


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format. `render` builds the prompt; `stop_strings` end an assistant turn (the tokenizer adds
    those that are single tokens to its eos_ids)."""

    name: str
    bos_token: str = ""
    eos_token: str = ""
    default_system: str | None = None  # system prompt a ChatML template inserts when none is given
    source: str | None = None          # the model's own template program, when it had one

    @classmethod
    def by_name(
        cls, name: str, *, bos_token: str = "", eos_token: str = "", default_system: str | None = None
    ) -> ChatTemplate:
        """A template chosen by name: "chatml", "llama2", "llama3", "zephyr" or "plain"."""
        if name not in TEMPLATE_NAMES:
            raise TokenizerError(f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
        if name == "llama2":
            bos_token, eos_token = bos_token or "<s>", eos_token or "</s>"
        elif name == "llama3":
            bos_token = bos_token or "<|begin_of_text|>"
        elif name == "zephyr":
            eos_token = eos_token or "</s>"
        return cls(name, bos_token=bos_token, eos_token=eos_token, default_system=default_system)

    @classmethod
    def detect(
        cls, source: str | None, special_tokens: Collection[str] = (), *, bos_token: str = "", eos_token: str = ""
    ) -> ChatTemplate:
        """The template for a model: from the markers in its template program when it has one, else from the
        special tokens of its vocabulary; "plain" when neither says anything."""
        if source:
            if "<|im_start|>" in source:
                match = _CHATML_DEFAULT_SYSTEM.search(source)
                system = match.group(1).replace("\\n", "\n") if match else None
                name = "chatml"
            else:
                system = None
                if "<|start_header_id|>" in source:
                    name = "llama3"
                elif "[INST]" in source:
                    name = "llama2"
                elif "<|user|>" in source and "<|assistant|>" in source:
                    name = "zephyr"
                else:
                    name = "plain"
        else:
            system = None
            if "<|im_start|>" in special_tokens:
                name = "chatml"
            elif "<|start_header_id|>" in special_tokens:
                name = "llama3"
            else:
                name = "plain"
        template = cls.by_name(name, bos_token=bos_token, eos_token=eos_token, default_system=system)
        return cls(template.name, template.bos_token, template.eos_token, template.default_system, source)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return {
            "chatml": ("<|im_end|>",),
            "llama2": (self.eos_token,),
            "llama3": ("<|eot_id|>",),
            "zephyr": (self.eos_token,),
            "plain": ("\nUser:",),
        }[self.name]

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for messages ([{"role": "system"|"user"|"assistant", "content": str}, ...]).

        With add_generation_prompt the text ends where the assistant's answer begins. The BOS text is included
        where the model's template writes it (llama2, llama3), so encode the result with bos=False."""
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise TokenizerError(f"chat message {i} must be a dict with 'role' and 'content', got {message!r}")
        render = getattr(self, f"_render_{self.name}")
        return render([(str(m["role"]), str(m["content"])) for m in messages], add_generation_prompt)

    def _render_chatml(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        parts = []
        if self.default_system is not None and messages and messages[0][0] != "system":
            parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        parts += [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages]
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def _render_llama3(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        parts = [self.bos_token] if messages else []
        parts += [
            f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>" for role, content in messages
        ]
        if add_generation_prompt:
            parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
        return "".join(parts)

    def _render_llama2(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        # Llama 2's own template has no generation prompt: a conversation ending on a user turn already ends with
        # "[/INST]", where the answer starts.
        system = None
        if messages and messages[0][0] == "system":
            system, messages = messages[0][1], messages[1:]
        parts = []
        for i, (role, content) in enumerate(messages):
            if (role == "user") != (i % 2 == 0):
                raise TokenizerError(
                    f"the llama2 chat template needs turns alternating user/assistant starting with user "
                    f"(after an optional system message); message {i} has role {role!r}"
                )
            if i == 0 and system is not None:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            if role == "user":
                parts.append(f"{self.bos_token}[INST] {content.strip()} [/INST]")
            else:
                parts.append(f" {content.strip()} {self.eos_token}")
        return "".join(parts)

    def _render_zephyr(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        parts = [f"<|{role}|>\n{content}{self.eos_token}\n" for role, content in messages
                 if role in ("user", "system", "assistant")]
        if add_generation_prompt and messages:
            parts.append("<|assistant|>\n")
        return "".join(parts)

    def _render_plain(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        # For models with no chat format: a transcript a base model can continue.
        parts = [f"{role.capitalize()}: {content}\n" for role, content in messages]
        if add_generation_prompt:
            parts.append("Assistant:")
        return "".join(parts)
