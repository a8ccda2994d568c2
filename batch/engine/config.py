"""What the engine is built from: the models, how they run on this machine, and where they come from.

`batch.run.config.configure` makes these from the user's settings, and the engine reads only these (never the
settings themselves).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from batch.engine.asr.decoding import DecodingOptions
from batch.engine.asr.languages import LanguageRule, OtherLanguages, language_rule
from batch.engine.quality.guard import QualityOptions
from batch.engine.vad.speech import VadOptions


@dataclass(frozen=True)
class HubConfig:
    """Where models come from. The token's value is never shown (repr) and never recorded."""

    cache_dir: str | None = None
    offline: bool = False
    token: str | None = field(default=None, repr=False)
    token_source: str | None = None  # hf_token_file, HF_TOKEN, ...: said in messages instead of the value


@dataclass(frozen=True)
class RuntimeOptions:
    """How the models run on this machine (does not change what they say)."""

    device: str
    compute_type: str
    threads: int
    batch_size: int
    gpu_memory_reserve: int = 1024**3


@dataclass(frozen=True)
class AsrConfig:
    model: str = "large-v3"
    language: str = "auto"  # an ISO code (forced, with the other-language check), or auto: detected per chunk
    languages: tuple[str, ...] = ()  # with auto: detected among these only
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    other_languages: OtherLanguages = "transcribe"  # a chunk found in another language than the forced one

    def language_rule(self, multilingual: bool) -> LanguageRule | None:
        """How each chunk's language is chosen from its detection; None: no detection (it could change nothing)."""
        return language_rule(self.language, self.languages, self.other_languages, self.decoding.task, multilingual)

    def english_only_problem(self) -> tuple[str, str] | None:
        """(key, message) when an English-only model cannot do what is asked of it."""
        if self.language not in ("auto", "en"):
            return "language", f"the model {self.model} is English-only; use en or auto"
        if self.languages:
            return "languages", f"the model {self.model} is English-only: it detects no language; leave languages out"
        if self.decoding.task == "translate":
            return "task", f"the model {self.model} is English-only: it cannot translate; use a multilingual model"
        return None


@dataclass(frozen=True)
class AlignConfig:
    enabled: bool = True
    model: str | None = None  # for every language, when given
    per_language: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DiarizeConfig:
    enabled: bool = False
    model: str = "pyannote/speaker-diarization-community-1"
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the models need: what the pipeline is built from."""

    asr: AsrConfig
    vad: VadOptions
    align: AlignConfig
    diarize: DiarizeConfig
    hub: HubConfig
    runtime: RuntimeOptions
    quality: QualityOptions = field(default_factory=QualityOptions)  # the hallucination guard (off unless asked)
