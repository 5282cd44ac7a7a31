"""Chat templates: turning a list of messages into the exact prompt text a chat model was trained on.

Models ship their template as a Jinja program; we do not run Jinja (it is not a dependency). Instead we recognise
which of the few families the program is (by its markers) and render that family in Python, reproducing the
program's output byte for byte; the tests hold the renderings against transformers' Jinja output.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

from ..errors import TokenizerError

TEMPLATE_NAMES = ("chatml", "llama2", "llama3", "llama3.1", "mistral", "zephyr", "plain")

# ChatML programs that insert a system turn when the conversation has none write it as a literal; the "\n" after
# "system" is either a real newline or the two characters backslash-n inside a Jinja string.
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)((?:(?!<\|im_end\|>)[^'\"{}])*)<\|im_end\|>")
# Llama 3.1+ programs write a knowledge-cutoff header with a date they either fix or take from the clock.
_LLAMA31_DATE = re.compile(r"set date_string = [\"']([^\"']+)[\"']")
LLAMA31_DEFAULT_DATE = "26 Jul 2024"


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format. `render` builds the prompt; `stop_strings` end an assistant turn (the tokenizer adds
    those that are single tokens to its eos_ids)."""

    name: str
    bos_token: str = ""
    eos_token: str = ""
    default_system: str | None = None  # chatml: the system turn inserted when the conversation has none
    date_string: str | None = None     # llama3.1: the "Today Date" it writes; None = today's, as strftime_now
    after_answer: str = ""             # mistral: what follows eos after an answer (" " in Mistral-7B-v0.1's)
    source: str | None = None          # the model's own template program, when it had one

    @classmethod
    def by_name(
        cls, name: str, *, bos_token: str = "", eos_token: str = "", default_system: str | None = None,
        date_string: str | None = LLAMA31_DEFAULT_DATE, after_answer: str = "", source: str | None = None,
    ) -> ChatTemplate:
        """A template chosen by name: one of TEMPLATE_NAMES."""
        if name not in TEMPLATE_NAMES:
            raise TokenizerError(f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
        if name in ("llama2", "mistral"):
            bos_token, eos_token = bos_token or "<s>", eos_token or "</s>"
        elif name in ("llama3", "llama3.1"):
            bos_token = bos_token or "<|begin_of_text|>"
        elif name == "zephyr":
            eos_token = eos_token or "</s>"
        return cls(name, bos_token, eos_token, default_system, date_string, after_answer, source)

    @classmethod
    def detect(
        cls, source: str | None, special_tokens: Collection[str] = (), *, bos_token: str = "", eos_token: str = ""
    ) -> ChatTemplate:
        """The template for a model: from the markers in its template program when it has one, else from the
        special tokens of its vocabulary; "plain" when neither says anything."""
        options: dict[str, Any] = {}
        if source:
            if "<|im_start|>" in source:
                name = "chatml"
                match = _CHATML_DEFAULT_SYSTEM.search(source)
                if match:
                    options["default_system"] = match.group(1).replace("\\n", "\n")
            elif "<|start_header_id|>" in source:
                name = "llama3"
                if "Cutting Knowledge Date" in source:
                    name = "llama3.1"
                    match = _LLAMA31_DATE.search(source)
                    options["date_string"] = None if "strftime_now" in source or not match else match.group(1)
            elif "[INST]" in source:
                name = "llama2" if "<<SYS>>" in source else "mistral"
                if name == "mistral" and re.search(r"eos_token\s*\+\s*' '", source):
                    options["after_answer"] = " "
            elif "<|user|>" in source and "<|assistant|>" in source:
                name = "zephyr"
            else:
                name = "plain"
        elif "<|im_start|>" in special_tokens:
            name = "chatml"
        elif "<|start_header_id|>" in special_tokens:
            name = "llama3"
        else:
            name = "plain"
        return cls.by_name(name, bos_token=bos_token, eos_token=eos_token, source=source, **options)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return {
            "chatml": ("<|im_end|>",),
            "llama2": (self.eos_token,),
            "llama3": ("<|eot_id|>",),
            "llama3.1": ("<|eot_id|>", "<|eom_id|>"),
            "mistral": (self.eos_token,),
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
        render = getattr(self, f"_render_{self.name.replace('.', '_')}")
        return render([(str(m["role"]), str(m["content"])) for m in messages], add_generation_prompt)

    def _render_chatml(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        parts = []
        if self.default_system is not None and messages and messages[0][0] != "system":
            parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        parts += [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages]
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    @staticmethod
    def _llama3_turns(messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        parts = [f"<|start_header_id|>{r}<|end_header_id|>\n\n{content.strip()}<|eot_id|>" for r, content in messages]
        if add_generation_prompt:
            parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
        return "".join(parts)

    def _render_llama3(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        return (self.bos_token if messages else "") + self._llama3_turns(messages, add_generation_prompt)

    def _render_llama3_1(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        # Llama 3.1+ always opens with a system turn that states the knowledge cutoff and today's date.
        system = ""
        if messages and messages[0][0] == "system":
            system, messages = messages[0][1].strip(), messages[1:]
        date = self.date_string if self.date_string is not None else time.strftime("%d %b %Y")
        header = (
            f"{self.bos_token}<|start_header_id|>system<|end_header_id|>\n\n"
            f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n{system}<|eot_id|>"
        )
        return header + self._llama3_turns(messages, add_generation_prompt)

    def _render_mistral(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        # Mistral-7B-Instruct's template has no system role; like its later versions we put the system text in
        # front of the first user message.
        if messages and messages[0][0] == "system" and len(messages) > 1:
            system, (role, content) = messages[0][1], messages[1]
            messages = [(role, f"{system}\n\n{content}"), *messages[2:]]
        parts = [self.bos_token]
        for i, (role, content) in enumerate(messages):
            if (role == "user") != (i % 2 == 0):
                raise TokenizerError(
                    f"the mistral chat template needs turns alternating user/assistant starting with user; "
                    f"message {i} has role {role!r}"
                )
            if role == "user":
                parts.append(f"[INST] {content} [/INST]")
            else:
                parts.append(f"{content}{self.eos_token}{self.after_answer}")
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
