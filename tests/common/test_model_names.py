"""faster-whisper's model names, repositories and files, read without importing faster-whisper, against what its
own download_model does."""

from __future__ import annotations

from typing import Any

import huggingface_hub
import pytest

from batch.common.model_names import MODEL_FILES, hub_repository, whisper_models


def test_the_name_table_is_faster_whispers() -> None:
    from faster_whisper.utils import _MODELS

    assert whisper_models() == _MODELS


@pytest.mark.parametrize("model", ["tiny.en", "large-v3", "distil-large-v3", "acme/whisper-voicemail", "a/b/c"])
def test_the_repository_and_files_are_those_download_model_asks_the_hub_for(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faster_whisper.utils import download_model

    asked: dict[str, Any] = {}
    # The Hub library's call, recorded: faster-whisper's own code decides what it asks for.
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: asked.update(kwargs, repo=repo_id)
    )
    download_model(model, local_files_only=True)
    assert asked["repo"] == hub_repository(model)
    assert asked["allow_patterns"] == list(MODEL_FILES)


def test_a_name_download_model_refuses_has_no_repository() -> None:
    from faster_whisper.utils import download_model

    with pytest.raises(ValueError, match="Invalid model size"):
        download_model("large-v9", local_files_only=True)
    assert hub_repository("large-v9") is None
