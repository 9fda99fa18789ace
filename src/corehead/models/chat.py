"""The prompt around a sample: the checkpoint's own chat template, or a hand-written format as the fallback.

A chat turns (visual items, question, optional gold answer) into tagged text pieces (TAGS of
`models.base`) in which each visual item is still its placeholder ("<|image_pad|>", "<image>", ...); the
adapter expands the placeholders as the model's processor does and tokenizes the whole string.

`TemplateChat` renders the conversation with the checkpoint's Jinja template (`apply_chat_template`,
generation prompt on, each image / page / video a content item of the user turn) and finds the question and
the answer by sentinels, so no piece is ever tokenized alone. `ChatFormat` is the hand-written format of
a family, used only for checkpoints that ship no template.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger("corehead")

# One element of a prompt: (tag, text)
Piece = tuple[str, str]
# Stand-ins rendered in place of the question, answer and system text, then replaced by them: private-use
# characters that no template writes and every tokenizer-free string operation keeps intact.
QUESTION = "\ue000question\ue001"
ANSWER = "\ue000answer\ue001"
SYSTEM = "\ue000system\ue001"
# Where a checkpoint folder keeps its processor's template (the tokenizer's is `tokenizer.chat_template`).
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class Chat(Protocol):
    """Writes the prompt of one sample as tagged pieces."""

    source: str  # "checkpoint template" or "fallback"
    system_prompt: str | None  # a system turn of one's own (None: the template's default)
    drop_system: bool  # no system turn at all

    @property
    def end(self) -> str:
        """The text that closes the assistant's turn (generation stops at it)."""
        ...

    def pieces(self, items: list[str], question: str, answer: str | None = None) -> list[Piece]:
        """The prompt for visual `items` ("image" or "video", in order) and `question`; with `answer`, the gold
        answer and the end of turn follow the generation prompt."""
        ...


@dataclass
class ChatFormat:
    """A family's chat format written by hand: the fallback for checkpoints without a template.

    The user turn is `user`, each item's placeholder (`image` / `video`), `after_visuals`, the question;
    `assistant` opens the answer and `end` closes it. `system` wraps a system prompt ("{}" is the text);
    `default_system` is the one used when none is given (None: no system turn).
    """

    user: str
    assistant: str
    end: str
    image: str
    video: str = ""
    after_visuals: str = ""
    system: str = "{} "
    default_system: str | None = None
    source: str = field(default="fallback", init=False)
    system_prompt: str | None = field(default=None, init=False)
    drop_system: bool = field(default=False, init=False)

    def visual(self, items: list[str]) -> str:
        """The placeholders of the visual input, as this format writes them."""
        return "".join(self.image if kind == "image" else self.video for kind in items) + self.after_visuals

    def pieces(self, items: list[str], question: str, answer: str | None = None) -> list[Piece]:
        text = None if self.drop_system else (self.system_prompt or self.default_system)
        head = self.system.format(text) if text else ""
        out: list[Piece] = [("prompt", head + self.user), ("vision", self.visual(items)), ("question", question)]
        out.append(("prompt", self.assistant))
        if answer is not None:
            out += [("answer", answer), ("end", self.end)]
        return out


# ChatML, the turn format of the Qwen, OneVision and InternVL families (each family sets its placeholders)
CHATML = ChatFormat(
    user="<|im_start|>user\n",
    assistant="<|im_end|>\n<|im_start|>assistant\n",
    end="<|im_end|>",
    image="",
    system="<|im_start|>system\n{}<|im_end|>\n",
)


@dataclass
class TemplateChat:
    """The checkpoint's own chat template, rendered by the tokenizer (`apply_chat_template`).

    `system_prompt` adds a system turn; `drop_system` removes the template's default one (Qwen2-VL's
    "You are a helpful assistant."). Otherwise the prompt is exactly what the template writes.
    """

    template: str
    tokenizer: Any
    source: str = "checkpoint template"
    system_prompt: str | None = None
    drop_system: bool = False

    def render(self, messages: list[dict[str, Any]], generation: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=generation
        )
        return str(text)

    @staticmethod
    def messages(items: list[str], question: str, system: str | None) -> list[dict[str, Any]]:
        """A user turn of content items (the visual ones first, then the question), after an optional system turn."""
        content = [{"type": kind} for kind in items] + [{"type": "text", "text": question}]
        head = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system is not None else []
        return [*head, {"role": "user", "content": content}]

    def prompt(self, items: list[str], question: str, answer: bool = False) -> str:
        """The rendered prompt with sentinels for the question (and, with `answer`, the assistant's turn)."""
        if self.drop_system and self.system_prompt is None:
            return self._without_default_system(items, question, answer)
        messages = self.messages(items, question, self.system_prompt)
        if not answer:
            return self.render(messages, generation=True)
        return self.render([*messages, _assistant(ANSWER)], generation=False)

    def pieces(self, items: list[str], question: str, answer: str | None = None) -> list[Piece]:
        prompt = self.prompt(items, QUESTION)
        before, found, after = prompt.partition(QUESTION)
        if not found:
            raise ValueError("the chat template dropped the question (it renders no user text)")
        out: list[Piece] = [("prompt", before), ("question", question), ("prompt", after)]
        if answer is None:
            return out
        full = self.prompt(items, QUESTION, answer=True)
        lead, found, close = full[len(prompt) :].partition(ANSWER)
        if not full.startswith(prompt) or not found:  # a template that rewrites earlier turns: append the answer
            return [*out, ("answer", answer), ("end", self.end)]
        return [*out, ("answer", lead + answer), ("end", close.rstrip() or self.end)]

    @property
    def end(self) -> str:
        """What the template writes after an assistant message (trailing whitespace dropped), or the EOS token."""
        full = self.render([*self.messages([], QUESTION, None), _assistant(ANSWER)], generation=False)
        close = full.partition(ANSWER)[2].rstrip()
        return close or str(self.tokenizer.eos_token)

    def _without_default_system(self, items: list[str], question: str, answer: bool) -> str:
        """The prompt without the system turn a template writes when the conversation has none.

        The template's system turn is found by rendering one with a sentinel as its text: it ends where the
        user turn's own closing text ends after the sentinel, and starts with the user turn's opening with
        the role name changed. A template with no default system turn is rendered as it is.
        """
        user = self.messages(items, question, None)
        tail = [_assistant(ANSWER)] if answer else []
        plain = self.render(user + tail, generation=not answer)
        marked = self.render(self.messages(items, question, SYSTEM) + tail, generation=not answer)
        start, _, rest = marked.partition(SYSTEM)
        if not (plain.startswith(start) and plain.endswith(rest) and len(plain) > len(start) + len(rest)):
            return plain  # no default system turn
        alone = self.render(self.messages([], QUESTION, None), generation=False)
        opening, _, closing = alone.partition(QUESTION)
        after = rest[len(closing) :] if closing and rest.startswith(closing) else ""
        # the user turn's opening: the longest end of `opening` that the text after the system turn starts with
        user_open = next((opening[i:] for i in range(len(opening)) if after.startswith(opening[i:])), "")
        system_open = user_open.replace("user", "system", 1)
        if "user" not in user_open or not start.endswith(system_open):
            raise ValueError(
                "cannot tell where this chat template's default system turn ends; give --system-prompt instead "
                "of --no-system-prompt"
            )
        return start[: len(start) - len(system_open)] + after


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def find_template(path: str | Path | None, tokenizer: Any) -> str | None:
    """The checkpoint's chat template: the processor's (chat_template.jinja, chat_template.json) in a local
    folder, else the tokenizer's (tokenizer_config.json or its chat_template.jinja); None when it has none."""
    folder = Path(path) if path is not None else None
    if folder is not None and folder.is_dir():
        for name in TEMPLATE_FILES:
            file = folder / name
            if not file.exists():
                continue
            if name.endswith(".jinja"):
                return file.read_text()
            stored = json.loads(file.read_text()).get("chat_template")
            if isinstance(stored, dict):
                stored = stored.get("default")
            if isinstance(stored, str):
                return stored
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template else None


def make_chat(template: str | None, tokenizer: Any, fallback: ChatFormat, name: str) -> Chat:
    """The checkpoint's template when it has one, else the family's hand-written format (with a notice)."""
    if template:
        return TemplateChat(template, tokenizer)
    logger.warning("%s has no chat template; using corehead's hand-written prompt for its family", name)
    return replace(fallback)
