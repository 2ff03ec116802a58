// difflens feature browser: plain JavaScript, no library, no network. Data files (data/<key>.js) are scripts that
// call DIFFLENS.add(key, data); they are loaded with <script> tags on demand, which works from file://.
"use strict";
(function () {
  const D = window.DIFFLENS;
  const idx = D.index;
  const waiting = {};
  D.data = {};
  D.add = function (key, data) {
    D.data[key] = data;
    (waiting[key] || []).forEach((w) => w.resolve(data));
    delete waiting[key];
  };

  function load(key) {
    return new Promise((resolve, reject) => {
      if (D.data[key]) { resolve(D.data[key]); return; }
      const first = !waiting[key];
      (waiting[key] = waiting[key] || []).push({ resolve, reject });
      if (!first) return;
      const s = document.createElement("script");
      s.src = "data/" + key + ".js";
      s.onerror = () => {  // every caller hears of it, and a later call tries again
        const error = new Error("cannot load data/" + key + ".js");
        (waiting[key] || []).forEach((w) => w.reject(error));
        delete waiting[key];
        s.remove();
      };
      document.body.appendChild(s);
    });
  }

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const uniq = (a) => [...new Set(a)];
  const fmt = (v, d) => (v === null || v === undefined || Number.isNaN(v) ? "" : Number(v).toFixed(d));
  const state = { sort: "freq", desc: true, sae: null, latent: null, view: "latents" };
  const CATEGORY = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"];
  const HEAT = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

  function fill(select, values, labels) {
    const old = select.value;
    select.innerHTML = "";
    values.forEach((v, i) => select.appendChild(el("option", { value: String(v) }, labels ? labels[i] : String(v))));
    if (values.map(String).includes(old)) select.value = old;
  }

  // ---- heat maps: base64 uint8 grids drawn on a small canvas that CSS scales up (bilinear) over the image ----------
  function bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function heatColour(v) {
    const x = Math.min(0.9999, v / 255) * (HEAT.length - 1);
    const i = Math.floor(x);
    const f = x - i;
    return HEAT[i].map((c, k) => Math.round(c + f * (HEAT[i + 1][k] - c)));
  }

  function heatCanvas(b64, grid) {
    const [h, w] = grid;
    const c = el("canvas", { class: "thumb overlay", width: w, height: h });
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(w, h);
    const v = bytes(b64);
    for (let i = 0; i < v.length; i++) {
      const [r, g, b] = heatColour(v[i]);
      img.data.set([r, g, b, Math.round(60 + 150 * v[i] / 255)], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }

  function thumb(src, caption, heat, grid) {
    const fig = el("figure");
    const stack = el("div", { class: "stack" });
    stack.appendChild(el("img", { class: "thumb", src: src, alt: caption }));
    if (heat) {
      const c = heatCanvas(heat, grid);
      c.style.position = "absolute";
      c.style.left = "0";
      c.style.top = "0";
      c.style.opacity = "0.75";
      stack.appendChild(c);
    }
    fig.appendChild(stack);
    fig.appendChild(el("figcaption", {}, caption));
    return fig;
  }

  // ---- selection: model -> data set -> layer -> timestep -> SAE (run / input) ------------------------------------
  function selectedSae() {
    let rows = idx.saes;
    const steps = [["model-select", "model"], ["dataset-select", "dataset"], ["layer-select", "layer"],
      ["timestep-select", "timestep"]];
    for (const [id, key] of steps) {
      fill($(id), uniq(rows.map((r) => r[key])));
      rows = rows.filter((r) => String(r[key]) === $(id).value);
    }
    fill($("sae-select"), rows.map((r) => r.key), rows.map((r) => r.run + " / " + r.input));
    return rows.find((r) => r.key === $("sae-select").value) || null;
  }

  function refresh() {
    const meta = selectedSae();
    if (!meta) {
      $("latent-page").textContent = "No SAE in this run.";
      showData();
      return;
    }
    const controls = Object.entries(meta.controls || {}).map(([name, c]) =>
      `${name.replace("_", " ")} ${fmt(c.sigma_label, 2)} / ${fmt(c.purity, 2)}`).join(", ");
    $("sae-meta").textContent = `${meta.live} live of ${meta.n_latents} latents on ${meta.n_images} ${meta.split} ` +
      `images; sigma_label (${meta.sigma_definition || "sparse"}) ${fmt(meta.sigma_label, 2)}, purity ` +
      `${fmt(meta.purity, 2)}` + (controls ? ` (controls, sigma_label / purity: ${controls})` : "") +
      (meta.null && meta.null.p_value != null ? `; random-set null of the mean purity: 95th pct ` +
        `${fmt(meta.null.mean_p95, 2)}, p = ${fmt(meta.null.p_value, 4)}; ${fmt(100 * meta.null.beyond_share, 0)}% ` +
        `of latents above the single-set 95th pct (chance ${fmt(100 * meta.null.beyond_chance, 1)}%)` : "") +
      (meta.steered && meta.steered.length ? `; steered latents (their pages show the steering strip): ` +
        meta.steered.map((j) => "#" + j).join(", ") : "");
    load(meta.key).then((data) => {
      if (meta.key !== $("sae-select").value) return;  // a later selection has taken over
      state.sae = { meta, data };
      renderTable();
      const first = document.querySelector("#latent-table tbody tr");
      if (first) showLatent(Number(first.dataset.latent));
      showData();
    }).catch((e) => console.error(e.message));
  }

  // ---- latent list and latent page ---------------------------------------------------------------------------------
  function renderTable() {
    const q = $("latent-search").value.trim().toLowerCase();
    const rows = state.sae.data.latents.filter((l) => !q || String(l.id) === q || l.attr.toLowerCase().includes(q));
    const key = state.sort;
    rows.sort((a, b) => {
      const x = a[key], y = b[key];
      const c = typeof x === "string" ? x.localeCompare(y) : (x ?? -Infinity) - (y ?? -Infinity);
      return state.desc ? -c : c;
    });
    const body = document.querySelector("#latent-table tbody");
    body.innerHTML = "";
    rows.forEach((l) => {
      const tr = el("tr", { "data-latent": l.id });
      [l.id, fmt(l.freq, 3), fmt(l.mean, 3), fmt(l.purity, 2), l.attr, fmt(l.auroc, 3)]
        .forEach((v) => tr.appendChild(el("td", {}, String(v))));
      if (state.latent === l.id) tr.classList.add("selected");
      tr.addEventListener("click", () => showLatent(l.id));
      body.appendChild(tr);
    });
    document.querySelectorAll("#latent-table th").forEach((th) =>
      th.classList.toggle("sorted", th.dataset.key === state.sort));
  }

  function histogram(hist, fired, total) {
    const W = 360, H = 140, pad = 24;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H + 2 * pad);
    svg.setAttribute("class", "hist");
    const max = Math.max(1, ...hist.counts);
    const bw = (W - 2 * pad) / hist.counts.length;
    hist.counts.forEach((c, i) => {
      const r = document.createElementNS(svg.namespaceURI, "rect");
      const h = (H * c) / max;
      r.setAttribute("x", pad + i * bw);
      r.setAttribute("y", pad + H - h);
      r.setAttribute("width", Math.max(1, bw - 1));
      r.setAttribute("height", h);
      const t = document.createElementNS(svg.namespaceURI, "title");
      t.textContent = `${c} images in [${fmt(hist.edges[i], 3)}, ${fmt(hist.edges[i + 1], 3)})`;
      r.appendChild(t);
      svg.appendChild(r);
    });
    const label = (x, y, text, anchor) => {
      const t = document.createElementNS(svg.namespaceURI, "text");
      t.setAttribute("x", x);
      t.setAttribute("y", y);
      t.setAttribute("font-size", "10");
      t.setAttribute("text-anchor", anchor);
      t.textContent = text;
      svg.appendChild(t);
    };
    label(pad, H + pad + 14, fmt(hist.edges[0], 2), "start");
    label(W - pad, H + pad + 14, fmt(hist.edges[hist.edges.length - 1], 2), "end");
    label(W / 2, H + pad + 14, "activation", "middle");
    label(pad, pad - 6, `max ${max} images per bin`, "start");
    const box = el("div");
    box.appendChild(el("h4", {}, `Activation histogram: fires on ${fired} of ${total} images ` +
      `(density ${fmt((100 * fired) / total, 1)}%)`));
    box.appendChild(svg);
    return box;
  }

  // the untrained SAE's best AUROC for the same attribute value: what a latent that learned nothing reaches
  function controlAuroc(meta, attr) {
    const c = meta.controls && meta.controls.untrained;
    return c && attr && c.best_auroc[attr] !== undefined
      ? `; the untrained SAE's best latent: ${fmt(c.best_auroc[attr], 3)}` : "";
  }

  function showLatent(id) {
    const { meta, data } = state.sae;
    const l = data.latents.find((x) => x.id === id);
    if (!l) return;
    state.latent = id;
    document.querySelectorAll("#latent-table tbody tr").forEach((tr) =>
      tr.classList.toggle("selected", Number(tr.dataset.latent) === id));
    const page = $("latent-page");
    page.innerHTML = "";
    page.appendChild(el("h3", {}, `Latent ${id} · ${meta.layer} · t=${meta.timestep}`));
    page.appendChild(el("p", {}, `frequency ${fmt(l.freq, 3)}, mean activation ${fmt(l.mean, 3)}, top-10 purity ` +
      `${fmt(l.purity, 2)}, sigma ${fmt(l.sigma, 2)}; best attribute ${l.attr || "-"} (AUROC ${fmt(l.auroc, 3)}` +
      controlAuroc(meta, l.attr) + ")"));
    const heat = l.maps && l.maps.length ? "heat map: the latent's response at each position"
      : meta.maps ? "no heat map: beyond browser.heat_latents" : "no heat map: the extraction kept no maps";
    page.appendChild(el("h4", {}, `Top images (${heat})`));
    const top = el("div", { class: "images", id: "latent-images" });
    l.top.forEach((pos, i) => {
      const [src, label] = data.images[String(pos)];
      top.appendChild(thumb(src, `${label} · ${fmt(l.topAct[i], 2)}`, l.maps && l.maps[i], l.grid));
    });
    page.appendChild(top);
    page.appendChild(el("h4", {}, "Images from activation quantiles (of the images it fires on)"));
    const quant = el("div", { class: "images", id: "quantile-images" });
    l.quant.forEach((q) => {
      const [src, label] = data.images[String(q.image)];
      quant.appendChild(thumb(src, `q${Math.round(q.q * 100)} · ${label} · ${fmt(q.act, 2)}`));
    });
    page.appendChild(quant);
    if (l.steer && data.steer) page.appendChild(steerStrip(l.steer, data.steer));
    page.appendChild(histogram(l.hist, l.fired, meta.n_images));
  }

  // ---- steering strip: the images regenerated unedited and with this latent edited (rule steer_latents) ----------
  const percent = (v) => `${fmt(100 * v, 0)}%`;

  function steerCell(label, images, note) {
    const cell = el("div", { class: "steer-cell" });
    cell.appendChild(el("div", { class: "steer-label" }, label));
    const row = el("div", { class: "steer-images" });
    images.forEach((src, i) => row.appendChild(el("img", { src: src, alt: `${label}, image ${i + 1}` })));
    cell.appendChild(row);
    if (note) cell.appendChild(el("div", { class: "steer-note" }, note));
    return cell;
  }

  function steerNote(e) {
    const parts = [];
    if (e.success != null) parts.push(`success ${percent(e.success)} of ${e.eligible} eligible`);
    else if (e.eligible != null) parts.push("no eligible image");
    if (e.offTarget != null) parts.push(`off-target ${percent(e.offTarget)}`);
    if (e.change != null) parts.push(`mean change ${Number(e.change).toPrecision(3)}`);
    return parts.join(" · ");
  }

  function steerStrip(edits, steer) {
    const box = el("div", { id: "steer-strip" });
    const read = edits.some((e) => e.success != null || e.offTarget != null);
    box.appendChild(el("h4", {}, `Steering: the first ${steer.unedited.length} ${steer.source} images regenerated ` +
      "unedited and with this latent edited (" + (read ? "success: the edited image shows the latent's value, of " +
        "the images that lacked it; off-target: object count, other attribute or position changed)"
        : "mean change: squared change of the denoiser's latents, summed per image)")));
    const strip = el("div", { class: "steer-strip" });
    strip.appendChild(steerCell("unedited", steer.unedited, ""));
    edits.forEach((e) => strip.appendChild(steerCell(e.label, e.images, steerNote(e))));
    box.appendChild(strip);
    return box;
  }

  // ---- data view: a layer's pooled features on two principal components ------------------------------------------
  function showData() {
    const sae = state.sae && state.sae.meta;
    const svg = $("data-points");
    const view = sae && idx.views.find((v) => v.model === sae.model && v.dataset === sae.dataset &&
      v.layer === sae.layer && v.timestep === sae.timestep);
    if (!view) { svg.innerHTML = ""; $("data-meta").textContent = "no data view for this selection"; return; }
    load(view.key).then((data) => {
      const columns = Object.keys(data.colour);
      fill($("colour-select"), columns);
      const values = data.colour[$("colour-select").value] || [];
      const cats = uniq(values).sort();
      const colour = (v) => CATEGORY[cats.indexOf(v) % CATEGORY.length];
      svg.innerHTML = "";
      const W = Number(svg.getAttribute("width")), H = Number(svg.getAttribute("height"));
      data.x.forEach((x, i) => {
        const c = document.createElementNS(svg.namespaceURI, "circle");
        c.setAttribute("cx", 15 + x * (W - 30));
        c.setAttribute("cy", H - 15 - data.y[i] * (H - 30));
        c.setAttribute("r", 4);
        c.setAttribute("fill", colour(values[i]));
        c.addEventListener("mouseenter", () => hover(c, data, i, values[i]));
        c.addEventListener("mouseleave", () => $("tooltip").classList.add("hidden"));
        svg.appendChild(c);
      });
      $("data-meta").textContent = `${data.x.length} ${view.split} images of ${view.dataset}: ${view.layer} at ` +
        `t=${view.timestep}, pooled features on their first two principal components`;
      const legend = $("data-legend");
      legend.innerHTML = "";
      cats.slice(0, 40).forEach((v) => {
        const s = el("span");
        const sw = el("i");
        sw.style.background = colour(v);
        s.appendChild(sw);
        s.appendChild(document.createTextNode(v));
        legend.appendChild(s);
      });
    }).catch((e) => console.error(e.message));
  }

  function hover(circle, data, i, value) {
    const tip = $("tooltip");
    tip.innerHTML = "";
    tip.appendChild(el("img", { src: data.img[i], alt: data.ids[i] }));
    tip.appendChild(el("div", {}, `${data.ids[i]}: ${value}`));
    tip.style.left = `${Number(circle.getAttribute("cx")) + 8}px`;
    tip.style.top = `${Number(circle.getAttribute("cy")) + 8}px`;
    tip.classList.remove("hidden");
  }

  // ---- information view: an image's MI / CMI / attention maps per word, its ARO scores ---------------------------
  function showInfoRuns() {
    fill($("info-run-select"), idx.info.map((r) => r.key), idx.info.map((r) => `${r.model} / ${r.dataset}`));
    showInfoImages();
  }

  function showInfoImages() {
    const run = idx.info.find((r) => r.key === $("info-run-select").value);
    if (!run) { $("info-page").textContent = "No information run in this results folder."; return; }
    load(run.key).then((data) => {
      fill($("info-image-select"), data.images.map((m) => m.id));
      showInfoImage(data);
    }).catch((e) => console.error(e.message));
  }

  function showInfoImage(data) {
    const image = data.images.find((m) => m.id === $("info-image-select").value);
    const page = $("info-page");
    page.innerHTML = "";
    if (!image) return;
    page.appendChild(el("h3", {}, image.id));
    image.words.forEach((w) => {
      const row = el("div", { class: "word-row" });
      row.appendChild(el("div", { class: "label" }, `"${w.word}" (${w.type}): MI ${fmt(w.miNats, 1)} nats, ` +
        `CMI ${fmt(w.cmiNats, 1)} nats`));
      row.appendChild(thumb(image.img, "image"));
      row.appendChild(thumb(image.img, `MI (max ${fmt(w.scale, 3)} nats/px)`, w.mi, w.grid));
      row.appendChild(thumb(image.img, "CMI (same scale)", w.cmi, w.grid));
      if (w.attention) {  // none for a class-conditional model (no text attention)
        row.appendChild(thumb(image.img, `attention (max ${fmt(w.attMax, 3)})`, w.attention, w.grid));
      }
      page.appendChild(row);
    });
    if (!image.words.length) page.appendChild(el("p", { class: "hint" }, "No localization maps for this image."));
    if (image.aro.length) {
      page.appendChild(el("h4", {}, "ARO: true caption against its negatives (margin: true - best negative, nats)"));
      const t = el("table", { id: "aro-table" });
      const head = el("tr");
      ["kind", "group", "score", "candidates", "margin (nats)", "correct"].forEach((h) => head.appendChild(el("th", {}, h)));
      t.appendChild(head);
      image.aro.forEach((a) => {
        const tr = el("tr");
        [a.kind, a.group, a.score, a.candidates, fmt(a.margin, 2), a.correct ? "yes" : "no"]
          .forEach((v) => tr.appendChild(el("td", {}, String(v))));
        t.appendChild(tr);
      });
      page.appendChild(t);
    }
  }

  // ---- wiring ------------------------------------------------------------------------------------------------------
  function showView(name) {
    state.view = name;
    document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.view === name));
    ["latents", "data", "info"].forEach((v) => $("view-" + v).classList.toggle("hidden", v !== name));
    $("controls").classList.toggle("hidden", name === "info");
  }

  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => showView(b.dataset.view)));
  ["model-select", "dataset-select", "layer-select", "timestep-select", "sae-select"]
    .forEach((id) => $(id).addEventListener("change", refresh));
  $("latent-search").addEventListener("input", () => state.sae && renderTable());
  document.querySelectorAll("#latent-table th").forEach((th) => th.addEventListener("click", () => {
    state.desc = state.sort === th.dataset.key ? !state.desc : th.dataset.key !== "attr";
    state.sort = th.dataset.key;
    renderTable();
  }));
  $("colour-select").addEventListener("change", showData);
  $("info-run-select").addEventListener("change", showInfoImages);
  $("info-image-select").addEventListener("change", () => {
    const run = idx.info.find((r) => r.key === $("info-run-select").value);
    if (run) load(run.key).then(showInfoImage).catch((e) => console.error(e.message));
  });
  document.title = idx.title;
  $("title").textContent = idx.title;
  refresh();
  showInfoRuns();
  showView(idx.saes.length ? "latents" : "info");
})();
