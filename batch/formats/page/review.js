"use strict";
// The review page: every text is put in with textContent (never as markup); decisions are exported as a
// corrections file (docs/outputs.md#corrections-file) for `whisperx-batch corrections apply`.
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const WHO_KEY = "whisperx-batch-review-who";
  const decisions = new Map(); // segment id -> {segment, action, new_text, when}
  const reviewed = new Map(); // file -> when

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  const seconds = (value) => Number(value).toFixed(2);
  const now = () => new Date().toISOString();

  function storedWho() {
    try { return localStorage.getItem(WHO_KEY) || ""; } catch (error) { return ""; }
  }

  function signals(segment) {
    const parts = Object.entries(segment.signals).map(([name, value]) => el("span", {}, `${name} ${value}`));
    return el("div", { class: "signals" }, ...parts);
  }

  function words(segment) {
    const box = el("div", { class: "words" });
    for (const word of segment.words) {
      const score = typeof word.score === "number" ? word.score : null;
      const span = el("span", { title: score === null ? "no confidence" : `confidence ${score.toFixed(2)}` }, word.word);
      if (score !== null) span.style.background = `rgba(255, 80, 0, ${(1 - score) * 0.5})`;
      box.append(span, " ");
    }
    return box;
  }

  function player(segment) {
    if (!segment.clip) {
      const why = data.clips_reachable ? "no clip of this segment in DEST"
        : "its clip is in DEST's _review/clips/: open the page written there (review DEST without --out)";
      return el("p", { class: "note no-clip" }, why);
    }
    const from = Math.max(0, segment.start - segment.clip.start), to = Math.max(from, segment.end - segment.clip.start);
    // A media fragment: the player starts at the span and stops at its end; the context around it is a seek away.
    const audio = el("audio", { controls: "", preload: "metadata", src: `${segment.clip.url}#t=${from.toFixed(3)},${to.toFixed(3)}` });
    audio.dataset.from = from; audio.dataset.to = to;
    const again = el("button", { type: "button", class: "play-span" }, "Play the span");
    // The fragment's end holds for the first play only: the span played again stops at its end here.
    audio.addEventListener("timeupdate", () => { if (audio.dataset.stopAt && audio.currentTime >= to) { delete audio.dataset.stopAt; audio.pause(); } });
    again.addEventListener("click", () => { audio.dataset.stopAt = "span"; audio.currentTime = from; audio.play(); });
    return el("div", {}, audio, again);
  }

  function choices(segment) {
    return segment.kind === "dropped"
      ? [["", "leave it dropped"], ["keep", "keep (restore it)"]]
      : [["", "leave it as it is"], ["remove", "remove it"], ["edit", "edit its text"]];
  }

  function controls(file, segment, id, row) {
    const select = el("select", { class: "action", "aria-label": "decision" });
    for (const [value, label] of choices(segment)) select.append(el("option", { value }, label));
    const typed = el("textarea", { class: "new-text", "aria-label": "new text", hidden: "" });
    typed.value = segment.text;
    const record = () => {
      const action = select.value;
      typed.hidden = action !== "edit";
      row.classList.toggle("keep", action === "keep");
      row.classList.toggle("removed", action === "remove");
      if (!action) decisions.delete(id);
      else decisions.set(id, { file: file.file, segment, action, new_text: typed.value, when: now() });
    };
    select.addEventListener("change", record);
    typed.addEventListener("input", record);
    const box = el("div", { class: "decide" }, select, typed);
    if (segment.applied) box.append(el("p", { class: "note" }, `applied before: ${segment.applied}`));
    return box;
  }

  function segmentRow(file, segment, index) {
    const id = `${file.file}\u0000${index}`;
    const row = el("div", { class: `segment kind-${segment.kind}` });
    const head = el("div", { class: "head" }, el("span", { class: "kind" }, segment.kind),
      `${seconds(segment.start)}–${seconds(segment.end)} s`, " ", ...segment.reasons.map((r) => el("span", { class: "reason" }, r)));
    const body = el("div", {}, el("p", { class: "text" }, segment.text), signals(segment));
    if (segment.words.length) body.append(words(segment));
    const side = el("div", {}, player(segment), controls(file, segment, id, row));
    row.append(head, body, side);
    return row;
  }

  function fileSection(file) {
    const section = el("section", { class: "file" });
    section.dataset.file = file.file;
    const mark = el("input", { type: "checkbox", class: "reviewed" });
    mark.addEventListener("change", () => {
      if (mark.checked) reviewed.set(file.file, now()); else reviewed.delete(file.file);
      section.classList.toggle("reviewed", mark.checked);
    });
    const facts = [file.language || "language unknown", file.audio_seconds == null ? "" : `${seconds(file.audio_seconds)} s`,
      file.confidence == null ? "" : `confidence ${file.confidence}`].filter(Boolean).join(" · ");
    section.append(el("h2", {}, file.file), el("p", { class: "facts" }, facts, " ",
      ...file.reasons.map((r) => el("span", { class: "reason" }, r))),
      el("label", {}, mark, " I have looked at the whole file: mark it reviewed"));
    if (!file.segments.length) section.append(el("p", { class: "note" }, "no dropped, doubtful or flagged segment"));
    file.segments.forEach((segment, index) => section.append(segmentRow(file, segment, index)));
    return section;
  }

  function corrections(who) {
    const byFile = new Map();
    const entry = (name) => {
      if (!byFile.has(name)) {
        const file = data.files.find((f) => f.file === name);
        byFile.set(name, { file: name, version: file.version, decisions: [] });
      }
      return byFile.get(name);
    };
    const skipped = [];
    for (const decision of decisions.values()) {
      const text = decision.new_text;
      if (decision.action === "edit" && (!text.trim() || text === decision.segment.text)) { skipped.push(decision); continue; }
      const made = { segment: { start: decision.segment.start, end: decision.segment.end, text: decision.segment.text },
        action: decision.action };
      if (decision.action === "edit") made.new_text = text;
      entry(decision.file).decisions.push({ ...made, who, when: decision.when });
    }
    for (const [name, when] of reviewed) Object.assign(entry(name), { reviewed: true, reviewed_by: who, reviewed_at: when });
    const document = { corrections_version: 1, dest: data.dest, made_by: data.made_by, made_at: now(), files: [...byFile.values()] };
    return { document, skipped };
  }

  function exportCorrections() {
    const note = document.getElementById("export-note");
    const who = document.getElementById("who").value.trim();
    if (!who) { note.textContent = "Give your name first: the corrections file says who decided."; return; }
    const { document: made, skipped } = corrections(who);
    if (!made.files.length) { note.textContent = "No decision yet: nothing to export."; return; }
    const text = JSON.stringify(made, null, 2);
    const link = document.getElementById("download");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    link.download = "corrections.json";
    link.click();
    window.exportedCorrections = text; // what was exported, for a look from the console
    const left = skipped.length ? `; ${skipped.length} edit(s) left out (no new text, or the same text)` : "";
    note.textContent = `corrections.json: ${made.files.length} file(s)${left}`;
  }

  document.getElementById("generated").textContent = `DEST ${data.dest}, made ${data.generated_at} by ${data.made_by}`;
  const who = document.getElementById("who");
  who.value = storedWho();
  who.addEventListener("input", () => { try { localStorage.setItem(WHO_KEY, who.value); } catch (error) { /* no storage */ } });
  document.getElementById("export").addEventListener("click", exportCorrections);
  const files = document.getElementById("files");
  for (const file of data.files) files.append(fileSection(file));
  document.getElementById("empty").hidden = data.files.length > 0;
  document.body.dataset.ready = "true";
})();
