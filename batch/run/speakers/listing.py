"""What `speakers list` and `speakers calibrate` say: one document for machines, lines for people."""

from __future__ import annotations

from typing import Any

from batch.engine.speakers.wespeaker import default_threshold_of
from batch.run.speakers.calibrate import Calibration
from batch.run.speakers.library import Library


def describe(library: Library, location: str) -> dict[str, Any]:
    threshold = None if library.threshold is None else dict(vars(library.threshold))
    return {
        "library": location,
        "version": library.version,
        "encoder": library.encoder.to_dict(),
        "threshold": threshold,
        "calibration_current": library.calibration_is_current() if threshold else None,
        "default_threshold": default_threshold_of(library.encoder.name),
        "names": [
            {
                "name": name,
                "samples": len(samples),
                "speech_seconds": round(sum(sample.speech_seconds for sample in samples), 1),
                "sources": [sample.source for sample in samples],
            }
            for name, samples in sorted(library.names.items())
        ],
    }


def describe_text(library: Library, location: str) -> str:
    facts = describe(library, location)
    encoder = library.encoder
    lines = [
        f"{location}: version {facts['version']}",
        f"  encoder {encoder.name} ({encoder.revision[:19]}, {encoder.dimension} dimensions, {encoder.normalisation})",
        f"  threshold {threshold_text(library)}",
    ]
    lines += [
        f"  {entry['name']}: {entry['samples']} sample{'s' if entry['samples'] != 1 else ''}, "
        f"{entry['speech_seconds']:g} s of speech"
        for entry in facts["names"]
    ]
    return "\n".join(lines)


def threshold_text(library: Library) -> str:
    threshold = library.threshold
    if threshold is None:
        default = default_threshold_of(library.encoder.name)
        said = f"the encoder's default, {default:g}" if default is not None else "the encoder's default"
        return f"not calibrated: {said} (whisperx-batch speakers calibrate)"
    stale = "" if library.calibration_is_current() else "; samples changed since: calibrate again"
    return (
        f"{threshold.cosine:g} calibrated {threshold.calibrated_at} at a false-name rate of "
        f"{threshold.false_name_rate:g} (equal error rate {threshold.equal_error_rate:.1%}){stale}"
    )


def calibration_text(calibration: Calibration) -> str:
    threshold = calibration.threshold
    lines = [
        f"threshold {threshold.cosine:g} at a false-name rate of {threshold.false_name_rate:g}, from "
        f"{threshold.same_pairs} same-voice and {threshold.different_pairs} different-voice pairs",
        f"equal error rate {threshold.equal_error_rate:.1%} (at {threshold.equal_error_threshold:g}); at the threshold "
        f"{calibration.miss_rate:.1%} of same-voice pairs score below it",
        f"stored: library version {calibration.version}",
    ]
    lines += [
        f"look like one voice: {pair.first} and {pair.second} (centroids score {pair.score:g}): one person under two "
        "names, or two voices this encoder cannot tell apart; remove one, or enrol cleaner samples"
        for pair in calibration.look_alikes
    ]
    return "\n".join(lines)
