// The report's paged tables: the video table and the clip gallery load their rows from
// data/<collection>-<n>.js files (script tags, so it works from file:// too), one file at a
// time, and show one page of rows; only the current page's previews are in the document.
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
    const total = pageCount(state.collection);
    const previous = element("button", { type: "button", class: "previous" }, "\u2039 previous");
    const label = element("span", { class: "page" }, "page " + (state.page + 1) + " of " + total);
    const next = element("button", { type: "button", class: "next" }, "next \u203a");
    previous.disabled = state.page === 0;
    next.disabled = state.page >= total - 1;
    previous.onclick = () => render(state.collection, state.page - 1);
    next.onclick = () => render(state.collection, state.page + 1);
    nav.append(previous, label, next);
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
        const tr = element("tr", row.errors ? { class: "failed" } : {});
        const cells = [row.path, seconds(row.duration_s), row.size, row.codec, row.clips,
                       row.passed, row.filtered, row.failed, row.errors];
        cells.forEach((value, i) => tr.append(element("td", NUMERIC_VIDEO_COLUMNS.has(i) ? { class: "n" } : {}, value)));
        body.append(tr);
      }
      pager(document.getElementById("video-pager"), videos, renderVideos);
    });
  }

  // ---- gallery: #passed/3 or #filtered/0 names the tab and page, so pages can be linked to
  const gallery = { collection: "passed", page: 0 };
  function tile(row) {
    const figure = element("figure", { class: "tile " + row.status, "data-id": row.id });
    const link = element("a", { href: row.clip, title: row.id });
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

  function renderGallery(collection, page) {
    gallery.collection = collection;
    gallery.page = page;
    const wanted = "#" + collection + "/" + page;
    if (location.hash !== wanted) history.replaceState(null, "", wanted);
    for (const tab of document.querySelectorAll("#gallery-tabs button")) {
      tab.setAttribute("aria-pressed", String(tab.dataset.collection === collection));
    }
    const tiles = document.getElementById("tiles");
    if (config.collections[collection].count === 0) {
      tiles.replaceChildren(element("p", { class: "empty" }, "no " + collection + " clips"));
      pager(document.getElementById("gallery-pager"), gallery, renderGallery);
      return;
    }
    pageRows(collection, page, (rows) => {
      if (gallery.collection !== collection || gallery.page !== page) return; // a later click won
      tiles.replaceChildren(...rows.map(tile));
      pager(document.getElementById("gallery-pager"), gallery, renderGallery);
    });
  }

  function fromHash() {
    const match = /^#(passed|filtered)\/(\d+)$/.exec(location.hash);
    if (!match) return ["passed", 0];
    return [match[1], Math.min(Number(match[2]), pageCount(match[1]) - 1)];
  }

  for (const tab of document.querySelectorAll("#gallery-tabs button")) {
    tab.onclick = () => renderGallery(tab.dataset.collection, 0);
  }
  window.addEventListener("hashchange", () => renderGallery(...fromHash()));
  if (config.collections.videos.count > 0) renderVideos("videos", 0);
  renderGallery(...fromHash());
})();
