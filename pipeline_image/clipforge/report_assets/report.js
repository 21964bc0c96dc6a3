// The report's paged tables: the video table and the clip gallery load their rows from
// data/<collection>-<n>.js files (script tags, so it works from file:// too), one file at a
// time, and show one page of rows; only the current page's previews are in the document.
// Filtering or sorting the gallery loads all of a status's files (report.py caps them). The
// embedding map and the duplicates load their one file each. A clip's tile, point or row opens
// its panel.
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("report-config").textContent);
  const loaded = new Map(); // "collection/file" -> rows
  const waiting = new Map(); // "collection/file" -> callbacks

  window.clipforgeReport = {
    receive(collection, file, rows) {
      const key = collection + "/" + file;
      loaded.set(key, rows);
      for (const callback of waiting.get(key) || []) callback(rows);
      waiting.delete(key);
    },
  };

  function loadFile(collection, file, callback) {
    const key = collection + "/" + file;
    if (loaded.has(key)) return callback(loaded.get(key));
    if (waiting.has(key)) return waiting.get(key).push(callback);
    waiting.set(key, [callback]);
    const script = document.createElement("script");
    script.src = config.collections[collection].files[file];
    script.onerror = () => showError("cannot load " + script.src);
    document.head.appendChild(script);
  }

  function showError(message) {
    const box = document.getElementById("load-error");
    box.textContent = message;
    box.hidden = false;
  }

  function pageRows(collection, page, callback) {
    const first = page * config.pageSize;
    const file = Math.floor(first / config.rowsPerFile);
    const offset = first - file * config.rowsPerFile;
    loadFile(collection, file, (rows) => callback(rows.slice(offset, offset + config.pageSize)));
  }

  function loadAll(collection, callback) {
    const files = config.collections[collection].files;
    const parts = new Array(files.length);
    let left = files.length;
    if (left === 0) return callback([]);
    files.forEach((_, i) => loadFile(collection, i, (rows) => {
      parts[i] = rows;
      if (--left === 0) callback(parts.flat());
    }));
  }

  function pageCount(collection) {
    return Math.max(1, Math.ceil(config.collections[collection].count / config.pageSize));
  }

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function number(value, digits) {
    return value === null || value === undefined ? "" : Number(value).toPrecision(digits);
  }

  function seconds(value) {
    return value === null || value === undefined ? "" : Number(value).toFixed(2);
  }

  // Pager: prev / "page i of n" / next, for one collection at a time.
  function pager(nav, state, render) {
    nav.replaceChildren();
    const total = state.pages || pageCount(state.collection); // gallery.pages: of the clips that match
    const previous = element("button", { type: "button", class: "previous" }, "\u2039 previous");
    const label = element("span", { class: "page" }, "page " + (state.page + 1) + " of " + total);
    const next = element("button", { type: "button", class: "next" }, "next \u203a");
    previous.disabled = state.page === 0;
    next.disabled = state.page >= total - 1;
    previous.onclick = () => render(state.collection, state.page - 1);
    next.onclick = () => render(state.collection, state.page + 1);
    nav.append(previous, label, next);
  }

  // ---- failures: the plain reason, the raw message in a detail view
  function failureList(failures) {
    const cell = document.createDocumentFragment();
    for (const failure of failures || []) {
      cell.append(element("div", { class: "reason-text" }, failure.stage + ": " + failure.reason));
      const details = element("details", { class: "raw" });
      details.append(element("summary", {}, "raw message"), element("code", {}, failure.raw));
      cell.append(details);
    }
    return cell;
  }

  // ---- videos
  const videos = { collection: "videos", page: 0 };
  const NUMERIC_VIDEO_COLUMNS = new Set([1, 4, 5, 6, 7]);
  function renderVideos(collection, page) {
    videos.page = page;
    pageRows(collection, page, (rows) => {
      const body = document.getElementById("video-rows");
      body.replaceChildren();
      for (const row of rows) {
        const tr = element("tr", row.errors.length ? { class: "failed" } : {});
        const cells = [row.path, seconds(row.duration_s), row.size, row.codec, row.clips,
                       row.passed, row.filtered, row.failed];
        cells.forEach((value, i) => tr.append(element("td", NUMERIC_VIDEO_COLUMNS.has(i) ? { class: "n" } : {}, value)));
        const errors = element("td");
        errors.append(failureList(row.errors));
        tr.append(errors);
        body.append(tr);
      }
      pager(document.getElementById("video-pager"), videos, renderVideos);
    });
  }

  // ---- the clip panel: metadata, scores, caption, preview, link to the clip's file
  function openPanel(row) {
    const body = document.getElementById("clip-panel-body");
    body.replaceChildren();
    body.dataset.id = row.id;
    body.append(element("h3", {}, "clip " + row.id));
    if (row.preview) body.append(element("img", { class: "panel-preview", src: row.preview, alt: "preview of clip " + row.id }));
    if (row.clip) {
      const link = element("p");
      link.append(element("a", { href: row.clip, class: "clip-link" }, "open the clip's file (" + row.clip.split("/").pop() + ")"));
      body.append(link);
    }
    const facts = [
      ["status", row.status + (row.filtered_by ? ", filtered by " + row.filtered_by : "")],
      ["video", row.video], ["span", seconds(row.start) + "\u2013" + seconds(row.end) + " s (" + seconds(row.length) + " s)"],
      ["size", row.size], ["frame rate", number(row.framerate, 4)], ["frames", row.frames], ["codec", row.codec],
      ["bytes", row.bytes], ["motion, global mean", number(row.motion, 3)],
      ["motion, least-moving patch", number(row.motion_patch, 3)], ["aesthetic", number(row.aesthetic, 3)],
    ];
    for (const [stage, value] of Object.entries(row.scores || {})) facts.push(["score: " + stage, number(value, 4)]);
    if (row.embedding) facts.push(["embedding", row.embedding]);
    if (!row.valid) facts.push(["missing outputs", row.missing]);
    const table = element("table", { class: "clip-facts" });
    for (const [name, value] of facts) {
      if (value === null || value === undefined || value === "") continue;
      const tr = element("tr");
      tr.append(element("th", {}, name), element("td", {}, String(value)));
      table.append(tr);
    }
    body.append(table);
    if (row.caption) body.append(element("h4", {}, "caption"), element("p", { class: "caption" }, row.caption));
    if (row.errors && row.errors.length) {
      body.append(element("h4", {}, "errors"));
      const errors = element("div");
      errors.append(failureList(row.errors));
      body.append(errors);
    }
    const dialog = document.getElementById("clip-panel");
    if (!dialog.open) dialog.showModal();
  }

  // ---- gallery: #passed/3 or #filtered/0 names the tab and page, so pages can be linked to
  const gallery = { collection: "passed", page: 0 };
  function tile(row) {
    const figure = element("figure", { class: "tile " + row.status, "data-id": row.id });
    const link = element("a", { href: row.clip, title: "clip " + row.id });
    link.onclick = (event) => { event.preventDefault(); openPanel(row); };
    if (row.preview) {
      link.append(element("img", { src: row.preview, alt: "preview of clip " + row.id }));
    } else {
      link.append(element("div", { class: "no-preview" }, "no preview"));
    }
    figure.append(link);
    const caption = element("figcaption");
    caption.append(element("div", { class: "video" }, row.video + " @ " + seconds(row.start) + "\u2013" + seconds(row.end) + " s"));
    const scores = ["motion " + number(row.motion, 3)];
    if (row.aesthetic !== null) scores.push("aesthetic " + number(row.aesthetic, 3));
    caption.append(element("div", { class: "scores" }, scores.join(" \u00b7 ")));
    if (row.filtered_by) caption.append(element("div", { class: "reason" }, "filtered by " + row.filtered_by));
    if (!row.valid) caption.append(element("div", { class: "invalid" }, "missing: " + row.missing));
    if (row.caption) caption.append(element("div", { class: "caption" }, row.caption));
    figure.append(caption);
    return figure;
  }

  function control(id) { return document.getElementById(id); }

  // The gallery's filters and sort as set in the form; null when none is set.
  function criteria() {
    const value = (id) => control(id).value.trim();
    const found = {
      video: value("filter-video"), reason: value("filter-reason"), score: value("filter-score"),
      min: value("filter-min") === "" ? null : Number(value("filter-min")),
      max: value("filter-max") === "" ? null : Number(value("filter-max")), sort: value("gallery-sort"),
    };
    const any = found.video || found.reason || found.min !== null || found.max !== null || found.sort;
    return any ? found : null;
  }

  function selected(rows, wanted) {
    const kept = rows.filter((row) => {
      const score = row[wanted.score];
      if (wanted.video && !row.video.includes(wanted.video)) return false;
      if (wanted.reason && row.filtered_by !== wanted.reason) return false;
      if (wanted.min !== null && !(score !== null && score >= wanted.min)) return false;
      if (wanted.max !== null && !(score !== null && score <= wanted.max)) return false;
      return true;
    });
    if (wanted.sort) {
      const [key, direction] = wanted.sort.split("-");
      const field = key === "score" ? wanted.score : "length";
      const sign = direction === "asc" ? 1 : -1;
      const value = (row) => (row[field] === null ? -Infinity * sign : row[field]);
      kept.sort((a, b) => sign * (value(a) - value(b)) || (a.id < b.id ? -1 : 1));
    }
    return kept;
  }

  function showTiles(collection, page, rows, total) {
    const tiles = document.getElementById("tiles");
    tiles.replaceChildren(...(rows.length ? rows.map(tile) : [element("p", { class: "empty" }, "no clip matches")]));
    gallery.pages = Math.max(1, Math.ceil(total / config.pageSize));
    pager(document.getElementById("gallery-pager"), gallery, renderGallery);
  }

  function renderGallery(collection, page) {
    gallery.collection = collection;
    gallery.page = page;
    const wanted = "#" + collection + "/" + page;
    if (location.hash !== wanted) history.replaceState(null, "", wanted);
    for (const tab of document.querySelectorAll("#gallery-tabs button")) {
      tab.setAttribute("aria-pressed", String(tab.dataset.collection === collection));
    }
    const tiles = document.getElementById("tiles");
    const matches = control("gallery-matches");
    if (config.collections[collection].count === 0) {
      tiles.replaceChildren(element("p", { class: "empty" }, "no " + collection + " clips"));
      matches.textContent = "";
      gallery.pages = 1;
      pager(document.getElementById("gallery-pager"), gallery, renderGallery);
      return;
    }
    const wantedRows = criteria();
    const current = () => gallery.collection === collection && gallery.page === page; // a later click won
    if (wantedRows === null) {
      matches.textContent = "";
      pageRows(collection, page, (rows) => {
        if (current()) showTiles(collection, page, rows, config.collections[collection].count);
      });
      return;
    }
    loadAll(collection, (rows) => {
      if (!current()) return;
      const kept = selected(rows, wantedRows);
      matches.textContent = kept.length + " of " + rows.length + " clips match";
      const first = page * config.pageSize;
      showTiles(collection, page, kept.slice(first, first + config.pageSize), kept.length);
    });
  }

  function fromHash() {
    const match = /^#(passed|filtered)\/(\d+)$/.exec(location.hash);
    if (!match) return ["passed", 0];
    return [match[1], Math.min(Number(match[2]), pageCount(match[1]) - 1)];
  }

  // ---- the embedding map: a point per sampled clip, coloured by status; a click opens its panel
  function renderMap(points) {
    const meta = config.collections.map;
    const svg = control("map");
    const width = Number(svg.getAttribute("width")), height = Number(svg.getAttribute("height")), margin = 10;
    const ns = "http://www.w3.org/2000/svg";
    for (const point of points) {
      const circle = document.createElementNS(ns, "circle");
      circle.setAttribute("cx", (margin + point.x * (width - 2 * margin)).toFixed(1));
      circle.setAttribute("cy", (height - margin - point.y * (height - 2 * margin)).toFixed(1));
      circle.setAttribute("r", "5");
      circle.setAttribute("class", "point " + point.status);
      circle.dataset.id = point.id;
      const title = document.createElementNS(ns, "title");
      title.textContent = point.video + " @ " + seconds(point.start) + " s (" + point.status + ")";
      circle.append(title);
      circle.addEventListener("click", () => openPanel(point));
      svg.append(circle);
    }
    control("map-note").textContent = meta.algorithm + " embeddings of " + points.length + " clips" +
      (meta.total > points.length ? " (an even sample of " + meta.total + ")" : "") +
      ", projected on their first two principal components; click a point to open its clip.";
    control("embeddings").hidden = false;
  }

  // ---- duplicates: the most similar pairs dedup found
  function renderDuplicates(pairs) {
    const meta = config.collections.duplicates;
    const body = control("duplicate-rows");
    const cell = (row) => {
      const td = element("td", { class: "duplicate" });
      const link = element("a", { href: row.clip || "#", title: "clip " + row.id });
      link.onclick = (event) => { event.preventDefault(); openPanel(row); };
      if (row.preview) link.append(element("img", { src: row.preview, alt: "preview of clip " + row.id }));
      link.append(element("div", {}, row.video + " @ " + seconds(row.start) + " s"));
      td.append(link);
      return td;
    };
    for (const pair of pairs) {
      const tr = element("tr");
      tr.append(cell(pair.clip), cell(pair.duplicate_of), element("td", { class: "n" }, number(pair.similarity, 4)));
      body.append(tr);
    }
    control("duplicates-note").textContent = meta.total + " clips are duplicates of another" +
      (meta.total > pairs.length ? "; the " + pairs.length + " most similar are listed" : "") + ".";
    control("duplicates").hidden = false;
  }

  for (const tab of document.querySelectorAll("#gallery-tabs button")) {
    tab.onclick = () => renderGallery(tab.dataset.collection, 0);
  }
  for (const input of document.querySelectorAll("#gallery-filters input, #gallery-filters select")) {
    input.addEventListener(input.tagName === "SELECT" ? "change" : "input", () => renderGallery(gallery.collection, 0));
  }
  window.addEventListener("hashchange", () => renderGallery(...fromHash()));
  if (config.collections.videos.count > 0) renderVideos("videos", 0);
  if (config.collections.map) loadFile("map", 0, renderMap);
  if (config.collections.duplicates) loadFile("duplicates", 0, renderDuplicates);
  renderGallery(...fromHash());
})();
