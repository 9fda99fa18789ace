"""What every model adapter provides: encoded inputs with an exact visual-token map, batching, generation."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from corehead.data.sample import Box, Region, Sample, SampleError, VisualUnit
from corehead.models.chat import CHATML, Chat, ChatFormat, Piece, find_template, make_chat
from corehead.models.shape import ModelShape


@dataclass
class VisualTokenMap:
    """For each visual token of one encoded input: where it sits and which pixels it covers.

    Arrays, one row per visual token, in sequence order. `cells` are (x0, y0, x1, y1) in the unit's
    original pixel coordinates, after undoing the processor's resize. A video token covers
    `spans[i]` consecutive units starting at `units[i]` (the frames of one temporal patch).
    """

    positions: np.ndarray  # [N] int64, index in the token sequence
    units: np.ndarray  # [N] int64, first unit covered
    spans: np.ndarray  # [N] int64, number of consecutive units covered (1 for images and pages)
    cells: np.ndarray  # [N, 4] float64

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def empty(cls) -> VisualTokenMap:
        zeros = np.zeros(0, dtype=np.int64)
        return cls(zeros, zeros, zeros, np.zeros((0, 4)))

    def covers_unit(self, unit: int) -> np.ndarray:
        """Boolean mask of the tokens that cover `unit` (a video token covers its whole frame pair)."""
        return (self.units <= unit) & (unit < self.units + self.spans)

    def cell_shares(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        """The tokens covering `region`'s unit (indices into this map) and the share of each one's cell that lies
        inside the region's box (1 for a whole-unit region). No token on the unit raises ValueError."""
        on_unit = np.flatnonzero(self.covers_unit(region.unit))
        if len(on_unit) == 0:
            raise ValueError(f"no visual token covers unit {region.unit} (was it capped away?)")
        if region.box is None:
            return on_unit, np.ones(len(on_unit))
        x0, y0, x1, y1 = region.box
        c = self.cells[on_unit]
        inter = np.clip(np.minimum(c[:, 2], x1) - np.maximum(c[:, 0], x0), 0, None) * np.clip(
            np.minimum(c[:, 3], y1) - np.maximum(c[:, 1], y0), 0, None
        )
        share = inter / ((c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1]))
        if share.max() <= 0:
            raise ValueError(f"box {list(region.box)} overlaps no visual token of unit {region.unit}")
        return on_unit, share

    def region_tokens(self, region: Region, min_overlap: float = 0.5) -> tuple[np.ndarray, bool]:
        """Indices into this map of the tokens covering `region`, and whether the fallback was used.

        A token belongs to a box region when at least `min_overlap` of its cell lies inside the box; a
        whole-unit region takes all the unit's tokens. A box too small or thin for any cell to pass falls
        back to the cells it overlaps most: the best cell, and any other cell with at least half the best
        cell's overlap (so a thin text line straddling two cell rows keeps its whole width). A region
        overlapping no token raises ValueError.
        """
        on_unit, share = self.cell_shares(region)
        inside = on_unit[share >= min_overlap]
        if len(inside):
            return inside, False
        return on_unit[share >= 0.5 * share.max()], True

    def shifted(self, offset: int) -> VisualTokenMap:
        """The same map for a sequence with `offset` tokens prepended (left padding)."""
        return VisualTokenMap(self.positions + offset, self.units, self.spans, self.cells)


@dataclass
class Encoded:
    """One sample as model inputs (batch of one), with the positions analyses need.

    `tags` says what each token is (TAGS): the query groups of a scoring run are chosen by them.
    """

    inputs: dict[str, torch.Tensor]
    token_map: VisualTokenMap
    tags: np.ndarray  # [length] str, one of TAGS per token

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    def tagged(self, *tags: str) -> np.ndarray:
        """Positions of the tokens with any of `tags`, in order."""
        return np.flatnonzero(np.isin(self.tags, tags))

    @property
    def question(self) -> np.ndarray:
        """Positions of the question's tokens."""
        return self.tagged("question")

    @property
    def answer(self) -> np.ndarray:
        """Positions of the gold answer's tokens (empty unless encoded with the answer)."""
        return self.tagged("answer")

    @property
    def prompt_end(self) -> int:
        """Position of the last prompt token (the one that predicts the first answer token)."""
        prompt = self.tagged("prompt")
        return int(prompt[-1]) if len(prompt) else self.length - 1


# What each token of an encoded sample is (docs/query-groups.md): chat template text ("prompt": the user
# turn's opening, the assistant turn's opening), the visual input ("vision": its placeholders and what wraps
# them, e.g. <|vision_end|>, </img>, the newline after an image, image-newline placeholders, frame
# timestamps), the question, the gold answer (teacher forcing) and the end of turn after it ("end").
TAGS: tuple[str, ...] = ("prompt", "vision", "question", "answer", "end")
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass
class Assembled:
    """A token sequence with per-token tags, its pixel inputs and the visual token map."""

    ids: list[int] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    mm_types: list[int] = field(default_factory=list)  # 0 text, 1 image, 2 video (Qwen's mm_token_type_ids)
    pixels: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    token_map: VisualTokenMap = field(default_factory=VisualTokenMap.empty)

    def add_pixels(self, key: str, value: torch.Tensor) -> None:
        self.pixels.setdefault(key, []).append(value)

    def encoded(self, with_mm_types: bool = True) -> Encoded:
        tags = np.array(self.tags, dtype=str)
        inputs: dict[str, torch.Tensor] = {
            "input_ids": torch.tensor([self.ids]),
            "attention_mask": torch.ones(1, len(self.ids), dtype=torch.long),
        }
        if with_mm_types:
            inputs["mm_token_type_ids"] = torch.tensor([self.mm_types])
        inputs.update({k: torch.cat(v) for k, v in self.pixels.items() if v})
        return Encoded(inputs=inputs, token_map=self.token_map, tags=tags)


class ModelAdapter(Protocol):
    """A loaded vision-language model and the knowledge of how it sees pixels."""

    model: Any
    name: str
    family: str

    def encode(self, sample: Sample, answer: bool = False) -> Encoded:
        """Inputs for one sample; with `answer`, the gold answer follows the prompt (teacher forcing)."""
        ...

    def collate(self, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
        """Left-padded batch of encoded samples."""
        ...

    def generate(self, samples: list[Sample], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers, one per sample."""
        ...


@dataclass
class RegionTokens:
    """The visual tokens of a sample's regions (indices into its token map), and how they were found."""

    indices: np.ndarray
    fallbacks: int  # regions too small for any cell to pass the overlap threshold


def sample_region_tokens(
    sample: Sample, token_map: VisualTokenMap, regions: list[Region] | None = None, min_overlap: float = 0.5
) -> RegionTokens:
    """Union of the tokens of `regions` (default: the sample's evidence regions); errors name the sample."""
    chosen = sample.regions if regions is None else regions
    parts, fallbacks = [], 0
    for k, region in enumerate(chosen):
        try:
            idx, fell_back = token_map.region_tokens(region, min_overlap)
        except ValueError as exc:
            raise SampleError.of(sample, f"regions[{k}]", str(exc)) from None
        parts.append(idx)
        fallbacks += int(fell_back)
    indices = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return RegionTokens(indices, fallbacks)


@dataclass
class Expansion:
    """What the processor writes in place of one placeholder of the prompt, and the map of its visual tokens.

    `text` holds `count` copies of `token` (and whatever else the processor adds: <img>, timestamps);
    `keep` are the indices, among those copies, of the tokens that cover pixels, and `units`, `spans` and
    `cells` describe each kept token (unit indices into the units given to `expand`).
    """

    kind: str  # "image" or "video"
    text: str
    token: int
    count: int
    keep: np.ndarray
    units: np.ndarray
    spans: np.ndarray
    cells: np.ndarray


class ChatAdapter(ABC):
    """Shared machinery of the adapters: the prompt, one whole-string tokenization, batching, generation.

    The prompt comes from `self.chat`: the checkpoint's chat template, or the family's hand-written
    `fallback` format. A family subclass names its `placeholders` (the text a template writes for an image
    or a video), its vision `wrappers` (tokens such as <|vision_start|> that belong to the visual input) and
    implements `expand`, which gives each placeholder's replacement and pixels exactly as the model's
    processor does. The whole prompt is then tokenized at once and tagged by character offsets.
    """

    fallback: ChatFormat = CHATML
    placeholders: dict[str, str]  # set by each family: the text a template writes for an image or a video
    with_mm_types: bool = False  # whether the model takes mm_token_type_ids

    max_frames: int | None = None  # frames kept per video (uniformly spaced); None keeps all

    def __init__(self, model: Any, tokenizer: Any, name: str, template: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.family = str(model.config.model_type)
        self.wrappers: set[int] = set()
        self.chat: Chat = make_chat(template or find_template(None, tokenizer), tokenizer, self.fallback, name)
        self.end_token = self._end_token()
        pad = tokenizer.pad_token_id
        self.pad_token = int(pad) if pad is not None else self.end_token

    def _end_token(self) -> int:
        """The token that closes the assistant's turn (generation stops there): the chat's end, else EOS."""
        ids = self.tokenizer(self.chat.end, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if len(ids) == 1 else int(self.tokenizer.eos_token_id)

    def set_system_prompt(self, text: str | None = None, drop: bool = False) -> None:
        """A system prompt of one's own (`text`), or none at all (`drop`); by default the template's."""
        if text is not None and drop:
            raise ValueError("give a system prompt or ask for none, not both")
        self.chat.system_prompt, self.chat.drop_system = text, drop

    @property
    def prompt(self) -> dict[str, str | None]:
        """Where the prompt comes from and its system turn, as run manifests record them."""
        system = "none" if self.chat.drop_system else self.chat.system_prompt
        return {"from": self.chat.source, "system": system if system is not None else "template default"}

    @abstractmethod
    def expand(self, out: Assembled, units: list[VisualUnit]) -> list[Expansion]:
        """The replacement of each image (or page) and each video of `units`, in order; pixels go to `out`."""

    def assemble(self, units: list[VisualUnit], pieces: list[Piece]) -> Assembled:
        """Tagged text pieces whose placeholders stand for `units`, expanded and tokenized as one string.

        Each placeholder is replaced by its `Expansion` (tagged "vision"); every token takes the tag of the
        character it starts at; wrapper tokens and whitespace right after the visual input count as "vision".
        """
        if not units:
            raise ValueError("a sample needs at least one visual unit")
        out = Assembled()
        kept = self.kept(units)
        expanded = self.expand(out, [units[i] for i in kept])
        # the n-th placeholder of a kind stands for the n-th image (or video): templates may reorder them
        expansions = {kind: iter([e for e in expanded if e.kind == kind]) for kind in self.placeholders}
        kinds = {text: kind for kind, text in self.placeholders.items()}
        pattern = re.compile("|".join(re.escape(p) for p in kinds))
        texts: list[str] = []
        spans: list[tuple[int, str]] = []  # (start character, tag) of each stretch of text
        placed: list[tuple[int, Expansion]] = []
        size = 0

        def put(text: str, tag: str) -> None:
            nonlocal size
            if text:
                texts.append(text)
                spans.append((size, tag))
                size += len(text)

        for tag, text in pieces:
            last = 0
            for match in pattern.finditer(text):
                put(text[last : match.start()], tag)
                expansion = next(expansions[kinds[match.group()]], None)
                if expansion is None:
                    raise ValueError(f"the prompt has more {kinds[match.group()]} placeholders than the sample has")
                placed.append((size, expansion))
                put(expansion.text, "vision")
                last = match.end()
            put(text[last:], tag)
        if any(next(rest, None) is not None for rest in expansions.values()):
            raise ValueError("the prompt has fewer visual placeholders than the sample has images and videos")
        self._tokenize(out, "".join(texts), spans, placed)
        index = np.asarray(kept)
        token_map = out.token_map
        last_unit = index[np.minimum(token_map.units + token_map.spans - 1, len(index) - 1)]
        # back to the sample's unit indices; a token spans every original frame between its first and last
        out.token_map = VisualTokenMap(
            token_map.positions, index[token_map.units], last_unit - index[token_map.units] + 1, token_map.cells
        )
        return out

    def _tokenize(
        self, out: Assembled, text: str, spans: list[tuple[int, str]], placed: list[tuple[int, Expansion]]
    ) -> None:
        """Token ids, tags, modality types and the visual token map of the whole prompt `text`."""
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        starts = np.array([s for s, _ in spans])
        names = np.array([t for _, t in spans] or ["prompt"])
        where = np.searchsorted(starts, offsets[:, 0], side="right") - 1
        tags = np.where((offsets[:, 1] > offsets[:, 0]) & (where >= 0), names[np.maximum(where, 0)], "prompt")
        tags = tags.astype(object)
        for k in range(len(tags)):  # wrappers and the whitespace after the visual input belong to it
            blank = k > 0 and tags[k - 1] == "vision" and not text[offsets[k, 0] : offsets[k, 1]].strip()
            if tags[k] == "prompt" and (int(ids[k]) in self.wrappers or blank):
                tags[k] = "vision"
        parts = []
        for start, expansion in placed:
            inside = (offsets[:, 0] >= start) & (offsets[:, 0] < start + len(expansion.text))
            found = np.flatnonzero(inside & (ids == expansion.token))
            if len(found) != expansion.count:
                raise ValueError(
                    f"the tokenizer split a {expansion.kind} into {len(found)} placeholder tokens, expected "
                    f"{expansion.count}"
                )
            parts.append((found[expansion.keep], expansion.units, expansion.spans, expansion.cells))
        out.ids = ids.tolist()
        out.tags = [str(t) for t in tags]
        types = self.modality_tokens()
        out.mm_types = [types.get(int(i), 0) for i in ids]
        columns = zip(*parts, strict=True) if parts else ()
        out.token_map = VisualTokenMap(*(np.concatenate(c) for c in columns)) if parts else VisualTokenMap.empty()

    def modality_tokens(self) -> dict[int, int]:
        """mm_token_type_ids of the placeholder tokens: 1 for image tokens, 2 for video tokens."""
        return {}

    def kept(self, units: list[VisualUnit]) -> list[int]:
        """Indices of the units fed to the model (kept_units with this family's frame sampling)."""
        return kept_units(units, self.max_frames, self.sample_frames)

    def sample_frames(self, frames: list[VisualUnit]) -> list[int]:
        """The frames of one video the family's video processor keeps (indices); by default all of them."""
        return list(range(len(frames)))

    def items(self, units: list[VisualUnit]) -> list[str]:
        """The content items of the visual input: one "image" per image or page, one "video" per run of frames."""
        kept = [units[i] for i in self.kept(units)]
        return ["video" if kept[g[0]].kind == "frame" else "image" for g in unit_groups(kept)]

    def encode(self, sample: Sample, answer: bool = False) -> Encoded:
        gold = self.gold_answer(sample) if answer else None
        try:
            pieces = self.chat.pieces(self.items(sample.units), sample.question, gold)
            assembled = self.assemble(sample.units, pieces)
        except (ValueError, OSError) as exc:
            raise SampleError.of(sample, "units", str(exc)) from None
        return assembled.encoded(self.with_mm_types)

    def collate(self, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
        """Left-pad a list of encoded samples into one batch (pixels concatenated in sample order)."""
        width = max(e.length for e in encoded)
        batch: dict[str, list[torch.Tensor]] = {}
        for e in encoded:
            pad = width - e.length
            for key, value in e.inputs.items():
                if key in SEQUENCE_KEYS:
                    fill = self.pad_token if key == "input_ids" else 0
                    value = torch.cat([torch.full((1, pad), fill, dtype=value.dtype), value], dim=1)
                batch.setdefault(key, []).append(value)
        return {k: self.concat(k, v) for k, v in batch.items()}

    def concat(self, key: str, values: list[torch.Tensor]) -> torch.Tensor:
        """Join one input across samples; families whose pixel tensors differ in shape override this."""
        return torch.cat(values)

    def cap_pixels(self, max_pixels: int) -> None:
        """Limit the pixels fed per image, as users of the family do for long inputs."""
        raise ValueError(f"{self.family} has a fixed input resolution; --max-pixels does not apply")

    def seen_size(self, unit: VisualUnit) -> tuple[int, int] | None:
        """(width, height) of `unit` as the model sees it after resizing, where the family's boxes need it."""
        return None

    def gold_answer(self, sample: Sample) -> str:
        """The answer text to teacher-force: a grounding sample's box in this family's own convention."""
        if sample.meta.get("task") != "grounding":
            return sample.answer
        from corehead.models.grounding import format_box

        unit = sample.units[sample.regions[0].unit]
        box = sample.regions[0].box
        if box is None:
            raise SampleError.of(sample, "regions[0]", "a grounding sample needs a box")
        return format_box(box, self.family, unit.width, unit.height, self.seen_size(unit))

    def parse_boxes(self, text: str, unit: VisualUnit) -> list[Box]:
        """Boxes written in a generated answer, mapped from the family's convention to `unit`'s pixels."""
        from corehead.models.grounding import parse_boxes

        return parse_boxes(text, self.family, unit.width, unit.height, self.seen_size(unit))

    @torch.no_grad()
    def generate(self, samples: list[Sample], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers, one per sample, generated as one left-padded batch."""
        return self.generate_encoded([self.encode(s) for s in samples], max_new_tokens)

    def generate_encoded(self, encoded: list[Encoded], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers for already encoded samples (collated exactly as `collate` lays them out)."""
        batch = {k: v.to(self.model.device) for k, v in self.collate(encoded).items()}
        return self.decode(self.generate_ids(batch, max_new_tokens))

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int = 16, **extra: Any) -> torch.Tensor:
        """The one generate call of corehead: greedy new tokens [B, M] after `inputs`, stopping at the end of
        turn; `extra` goes to `generate` (e.g. a prefilled `cache`)."""
        out = self.model.generate(
            **inputs,
            **extra,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.end_token,
            pad_token_id=self.pad_token,
        )
        return out[:, inputs["input_ids"].shape[1] :]

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Generated token ids [B, M] as answer texts, special tokens dropped, stripped."""
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @property
    def shape(self) -> ModelShape:
        """The decoder's layers, heads, KV heads and head width."""
        return ModelShape.of(self.model)


def unit_groups(units: list[VisualUnit]) -> list[list[int]]:
    """Each image or page alone; each run of consecutive frames as one video."""
    groups: list[list[int]] = []
    for i, unit in enumerate(units):
        if unit.kind == "frame" and groups and units[groups[-1][-1]].kind == "frame":
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def kept_units(
    units: list[VisualUnit], max_frames: int | None, sample: Callable[[list[VisualUnit]], list[int]] | None = None
) -> list[int]:
    """Indices of the units fed to the model: all images and pages; of each video the frames `sample` keeps
    (the video processor's own sampling; default all), then at most `max_frames` of them, evenly spaced."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    kept: list[int] = []
    for group in unit_groups(units):
        if units[group[0]].kind != "frame":
            kept += group
            continue
        if sample is not None:
            group = [group[i] for i in sample([units[i] for i in group])]
        if max_frames is not None and len(group) > max_frames:
            picks = np.linspace(0, len(group) - 1, max_frames).round().astype(int)
            group = [group[int(i)] for i in picks]
        kept += group
    return kept


def resize_frames(frames: list[Image.Image], height: int, width: int) -> list[Image.Image]:
    """Video frames resized as transformers' video processors resize them (torchvision's bicubic with
    antialiasing on uint8 frames, which is torch's own interpolate); a frame already that size is kept."""
    out = []
    for frame in frames:
        if frame.size == (width, height):
            out.append(frame)
            continue
        pixels = torch.from_numpy(np.array(frame.convert("RGB"))).permute(2, 0, 1)[None].contiguous()
        resized = torch.nn.functional.interpolate(
            pixels, size=[height, width], mode="bicubic", align_corners=False, antialias=True
        )
        out.append(Image.fromarray(resized[0].permute(1, 2, 0).numpy()))
    return out
