"use strict";
// The run report page: everything is drawn here from the JSON in #page-data, with textContent only (a file name
// or a reason that holds markup is shown as text, never parsed), and SVG built element by element.
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];
  const PAGE_ROWS = 100;
  const NUMERIC = new Set(["duration (s)", "realtime (x)", "speakers"]);

  function el(name, text, className) {
    const node = document.createElement(name);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svgEl(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function fillPairs(table, pairs) {
    for (const [name, value] of pairs) {
      const row = table.insertRow();
      row.appendChild(el("th", name));
      row.appendChild(el("td", value));
    }
  }

  function figure(title) {
    const box = el("figure", null, "plot");
    box.appendChild(el("figcaption", title));
    return box;
  }

  function empty(title, why) {
    const box = figure(title);
    box.appendChild(el("p", why));
    return box;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 5, 10]) if (value <= m * step) return m * step;
    return 10 * step;
  }

  function timeLabel(seconds) {
    if (seconds >= 7200) return (seconds / 3600).toFixed(1) + " h";
    if (seconds >= 120) return (seconds / 60).toFixed(0) + " min";
    return seconds.toFixed(0) + " s";
  }

  // A chart of series of [x, y] points: lines, or dots when `dots` is set; `xLabel` formats the x axis' ends.
  function chart(title, series, options) {
    const width = 380, height = 200, left = 44, right = 10, top = 10, bottom = 34;
    const points = series.flatMap((s) => s.points);
    if (!points.length) return empty(title, options.none || "nothing to draw");
    const xMax = Math.max(...points.map((p) => p[0]), 1e-9), yMax = niceMax(Math.max(...points.map((p) => p[1])));
    const x = (v) => left + (v / xMax) * (width - left - right);
    const y = (v) => top + (1 - v / yMax) * (height - top - bottom);
    const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    svg.appendChild(svgEl("title", {}, title));
    svg.appendChild(svgEl("path", { class: "axis", d: `M${left},${top}V${y(0)}H${width - right}` }));
    svg.appendChild(svgEl("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, +yMax.toPrecision(3)));
    svg.appendChild(svgEl("text", { x: left - 4, y: y(0), "text-anchor": "end" }, 0));
    svg.appendChild(svgEl("text", { x: left, y: height - 20 }, options.xLabel(0)));
    svg.appendChild(svgEl("text", { x: width - right, y: height - 20, "text-anchor": "end" }, options.xLabel(xMax)));
    svg.appendChild(svgEl("text", { x: (left + width) / 2, y: height - 4, "text-anchor": "middle" }, options.xTitle));
    svg.appendChild(svgEl("text", { x: 4, y: top + 8, transform: `rotate(-90 10 ${top + 60})` }, options.yTitle));
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const color = COLORS[i % COLORS.length];
      const d = options.dots
        ? s.points.map((p) => `M${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}h0`).join("")
        : "M" + s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("L");
      const path = svgEl("path", { class: options.dots ? "dots" : "line", d, stroke: color });
      path.appendChild(svgEl("title", {}, s.name));
      svg.appendChild(path);
      if (series.length > 1) {
        svg.appendChild(svgEl("text", { x: width - right, y: top + 10 + 12 * i, "text-anchor": "end", style: `fill:${color}` }, s.name));
      }
    });
    const box = figure(title);
    box.appendChild(svg);
    return box;
  }

  // Horizontal bars of [label, value] items.
  function bars(title, items, unit, none) {
    if (!items.length) return empty(title, none);
    const width = 380, labelWidth = 170, bar = 16, height = items.length * (bar + 6) + 8;
    const max = Math.max(...items.map((item) => item[1]), 1e-9);
    const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    svg.appendChild(svgEl("title", {}, title));
    items.forEach(([label, value, color], i) => {
      const top = 4 + i * (bar + 6), length = Math.max(1, (value / max) * (width - labelWidth - 70));
      const shown = label.length > 28 ? label.slice(0, 27) + "\u2026" : label;
      const name = svgEl("text", { x: labelWidth - 4, y: top + 12, "text-anchor": "end" }, shown);
      name.appendChild(svgEl("title", {}, label));
      svg.appendChild(name);
      const rect = svgEl("path", { d: `M${labelWidth},${top}h${length.toFixed(1)}v${bar}h${(-length).toFixed(1)}Z`, fill: color || COLORS[0] });
      svg.appendChild(rect);
      const figure = +value.toPrecision(3);
      svg.appendChild(svgEl("text", { x: labelWidth + length + 4, y: top + 12 }, unit === "$" ? `$${figure}` : `${figure} ${unit}`));
    });
    const box = figure(title);
    box.appendChild(svg);
    return box;
  }

  function drawPlots(plots) {
    const box = document.getElementById("plots");
    const overTime = { xLabel: timeLabel, xTitle: "time since the start" };
    box.appendChild(chart("Audio hours done", [{ name: "audio hours", points: plots.progress }],
      { ...overTime, yTitle: "audio hours", none: "no file transcribed" }));
    box.appendChild(bars("Time per stage (summed over files)", plots.stages, "s", "no stage timed"));
    if (plots.gpu) {
      const stages = Object.entries(plots.gpu);
      box.appendChild(chart("Batch size per stage (GPU)", stages.map(([name, rows]) => ({ name, points: rows.map((r) => [r[0], r[1]]) })),
        { ...overTime, yTitle: "batch size" }));
      box.appendChild(chart("Free GPU memory before each stage", stages.map(([name, rows]) => ({ name, points: rows.filter((r) => r[2] !== null).map((r) => [r[0], r[2]]) })),
        { ...overTime, yTitle: "GiB free", none: "no memory figures (no NVML)" }));
    } else {
      box.appendChild(empty("Batch sizes and GPU memory", "no GPU: no stage ran on a GPU"));
    }
    box.appendChild(chart("Realtime factor per file", [{ name: "realtime factor", points: plots.realtime.map((v, i) => [i + 1, v]) }],
      { dots: true, xLabel: (v) => (v ? `file ${v}` : "first"), xTitle: "files, in the order finished", yTitle: "x realtime", none: "no file timed" }));
    box.appendChild(bars("Failures by reason", plots.failures, "files", "no file failed"));
  }

  function drawCost(cost) {
    const note = document.getElementById("cost-note");
    const items = cost.list_prices.map((p) => [p.service, p.per_audio_hour, "#999"]);
    const span = cost.runs > 1 ? `these ${cost.runs} runs` : "this run";
    if (cost.per_audio_hour !== null) {
      items.unshift([`${span} at $${cost.price_per_hour}/machine hour`, cost.per_audio_hour, COLORS[2]]);
      note.textContent = `${cost.machine_hours.toFixed(3)} machine hours at $${cost.price_per_hour} an hour for ` +
        `${cost.audio_hours.toFixed(3)} audio hours: $${cost.per_audio_hour.toFixed(3)} per audio hour. `;
    } else {
      note.textContent = cost.price_per_hour === null
        ? "Set the machine's price per hour (--price-per-hour, or price_per_hour in the config file) to see what " + span + " cost per audio hour. "
        : "No audio transcribed: no cost per audio hour. ";
    }
    note.textContent += `Managed services: list prices as of ${cost.prices_as_of}, from their pricing pages (check them).`;
    document.getElementById("cost").appendChild(bars("Dollars per audio hour", items, "$"));
    const table = document.getElementById("prices");
    table.createTHead().insertRow().append(el("th", "service"), el("th", "$ per audio hour"), el("th", "source"));
    const body = table.createTBody();
    for (const p of cost.list_prices) {
      const row = body.insertRow();
      row.append(el("td", p.service), el("td", p.per_audio_hour, "num"), el("td", p.source));
    }
  }

  function drawRuns(runs) {
    if (!runs.length) return;
    document.getElementById("runs-section").hidden = false;
    const table = document.getElementById("runs");
    const names = ["run", "started", "succeeded", "failed", "skipped", "audio hours", "wall time", "realtime", "exit"];
    table.createTHead().insertRow().append(...names.map((name) => el("th", name)));
    const body = table.createTBody();
    for (const run of runs) {
      const row = body.insertRow();
      const link = el("a", run[0]);
      link.href = encodeURIComponent(run[0]) + ".html";
      const first = el("td");
      first.appendChild(link);
      row.append(first, ...run.slice(1).map((v) => el("td", v === null ? "-" : v, typeof v === "number" ? "num" : "")));
    }
  }

  // The files table: filtered by text and status, sorted by a column, shown PAGE_ROWS at a time.
  function filesTable(columns, rows) {
    const state = { sort: -1, descending: false, page: 0, shown: rows };
    const table = document.getElementById("files"), body = table.tBodies[0], head = table.tHead.rows[0];
    const filter = document.getElementById("filter"), status = document.getElementById("status");
    for (const value of [...new Set(rows.map((r) => r[1]))].sort()) status.appendChild(el("option", value)).value = value;
    const lower = rows.map((r) => r.map((v) => (v === null ? "" : String(v).toLowerCase())).join("\u0000"));
    columns.forEach((name, i) => {
      const th = el("th", name);
      th.addEventListener("click", () => {
        state.descending = state.sort === i ? !state.descending : false;
        state.sort = i;
        for (const other of head.cells) other.removeAttribute("aria-sort");
        th.setAttribute("aria-sort", state.descending ? "descending" : "ascending");
        update();
      });
      head.appendChild(th);
    });
    function compare(a, b) {
      const x = a[state.sort], y = b[state.sort];
      if (x === y) return 0;
      if (x === null || x === "") return 1;
      if (y === null || y === "") return -1;
      const order = NUMERIC.has(columns[state.sort]) ? x - y : String(x).localeCompare(String(y));
      return state.descending ? -order : order;
    }
    function update() {
      const needle = filter.value.trim().toLowerCase(), wanted = status.value;
      state.shown = rows.filter((r, i) => (!wanted || r[1] === wanted) && (!needle || lower[i].includes(needle)));
      if (state.sort >= 0) state.shown.sort(compare);
      state.page = Math.min(state.page, Math.max(0, Math.ceil(state.shown.length / PAGE_ROWS) - 1));
      render();
    }
    function render() {
      const pages = Math.max(1, Math.ceil(state.shown.length / PAGE_ROWS));
      const start = state.page * PAGE_ROWS;
      body.replaceChildren(...state.shown.slice(start, start + PAGE_ROWS).map(rowOf));
      document.getElementById("page").textContent = `page ${state.page + 1} of ${pages}`;
      document.getElementById("count").textContent = `${state.shown.length} of ${rows.length} files`;
      for (const [id, to] of [["first", 0], ["prev", state.page - 1], ["next", state.page + 1], ["last", pages - 1]]) {
        const button = document.getElementById(id);
        button.disabled = to < 0 || to >= pages || to === state.page;
        button.onclick = () => { state.page = to; render(); };
      }
    }
    function rowOf(r) {
      const tr = el("tr", null, r[1] === "failed" ? "failed" : r[6] ? "review" : "");
      r.forEach((v, i) => tr.appendChild(el("td", v === null ? "" : v, i === 0 ? "key" : NUMERIC.has(columns[i]) ? "num" : "")));
      return tr;
    }
    filter.addEventListener("input", () => { state.page = 0; update(); });
    status.addEventListener("change", () => { state.page = 0; update(); });
    update();
  }

  document.title = data.title;
  document.getElementById("title").textContent = data.title;
  document.getElementById("generated").textContent = `written ${data.generated_at} by whisperx-batch`;
  fillPairs(document.getElementById("summary"), data.summary);
  drawRuns(data.runs);
  drawPlots(data.plots);
  drawCost(data.cost);
  filesTable(data.columns, data.rows);
  fillPairs(document.getElementById("settings"), data.settings);
  fillPairs(document.getElementById("versions"), Object.entries(data.versions));
  document.body.dataset.ready = "true";
})();
