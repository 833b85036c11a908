// The study page's series viewer. The server renders each slice as three PNG layers (grey image in a window preset,
// lesion outline, Grad-CAM heat map); this script preloads them, nearest slices first, and draws the visible ones on
// one canvas, so a slice change or an overlay toggle is a synchronous redraw. URLs carry a job id and a slice index
// only. window.__viewer exposes the state and the measured slice-change times (ms) for the browser test.
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  if (!root) { return; }
  var canvas = document.getElementById("viewer-canvas");
  var g = canvas.getContext("2d");
  var seriesSelect = document.getElementById("viewer-series");
  var windowsBox = document.getElementById("viewer-windows");
  var outlineBox = document.getElementById("toggle-outline");
  var heatBox = document.getElementById("toggle-heat");
  var shadowBox = document.getElementById("toggle-shadow");
  var pos = document.getElementById("viewer-pos");
  var loadedLabel = document.getElementById("viewer-loaded");
  var slider = document.getElementById("viewer-slider");
  var jumpsBox = document.getElementById("viewer-jumps");

  var state = {
    meta: null, index: 0, window: null, outline: outlineBox.checked, heat: heatBox.checked, shadow: shadowBox.checked,
    images: {}, overlays: {}, loaded: 0, pending: null, timings: [], generation: 0,
  };
  window.__viewer = state;

  function url(index, layer) {
    var u = state.meta.layer_url.replace("{index}", String(index)).replace("{layer}", layer);
    return layer === "image" ? u + "?window=" + encodeURIComponent(state.window) : u;
  }

  function whenLoaded(img) {
    return img.complete && img.naturalWidth > 0;
  }

  function load(index, layer, onload) {
    var img = new Image();
    img.decoding = "async";
    img.onload = function () {
      var done = img.decode ? img.decode() : Promise.resolve();
      done.catch(function () {}).then(function () { onload(img); });
    };
    img.src = url(index, layer);
    return img;
  }

  function order(count, start) {
    var out = [start];
    for (var d = 1; out.length < count; d++) {
      if (start + d < count) { out.push(start + d); }
      if (start - d >= 0) { out.push(start - d); }
    }
    return out;
  }

  function preload() {
    var gen = ++state.generation;
    var key = state.window;
    state.images[key] = state.images[key] || {};
    var cache = state.images[key];
    state.loaded = Object.keys(cache).filter(function (i) { return whenLoaded(cache[i]); }).length;
    var queue = order(state.meta.count, state.index).filter(function (i) { return !cache[i]; });
    var inflight = 0;
    var limit = 6;
    function next() {
      if (gen !== state.generation) { return; }
      while (inflight < limit && queue.length) {
        var i = queue.shift();
        inflight++;
        cache[i] = load(i, "image", function (img) {
          inflight--;
          state.loaded++;
          canvas.dataset.loaded = String(state.loaded);
          loadedLabel.textContent = state.loaded < state.meta.count ? "loading " + state.loaded + "/" + state.meta.count : "";
          if (key === state.window && state.pending !== null && state.pending.index === indexOf(cache, img)) { draw(); }
          next();
        });
      }
    }
    next();
    canvas.dataset.loaded = String(state.loaded);
  }

  function indexOf(cache, img) {
    for (var k in cache) { if (cache[k] === img) { return parseInt(k, 10); } }
    return -1;
  }

  function preloadOverlays() {
    state.meta.slices.forEach(function (s) {
      ["outline", "heat", "shadow"].forEach(function (layer) {
        if (!s[layer]) { return; }
        var key = layer + ":" + s.index;
        if (state.overlays[key]) { return; }
        state.overlays[key] = load(s.index, layer, function () {
          if (s.index === state.index) { draw(); }
        });
      });
    });
  }

  function draw() {
    var img = (state.images[state.window] || {})[state.index];
    if (!img || !whenLoaded(img)) {
      if (!img) { preload(); }
      return;  // drawn by the image's onload
    }
    if (canvas.width !== img.naturalWidth || canvas.height !== img.naturalHeight) {
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
    }
    g.drawImage(img, 0, 0, canvas.width, canvas.height);
    var slice = state.meta.slices[state.index];
    [["heat", state.heat], ["shadow", state.shadow], ["outline", state.outline]].forEach(function (pair) {
      var layer = pair[0];
      if (!pair[1] || !slice[layer]) { return; }
      var over = state.overlays[layer + ":" + state.index];
      if (over && whenLoaded(over)) { g.drawImage(over, 0, 0, canvas.width, canvas.height); }
    });
    canvas.dataset.index = String(state.index);
    canvas.dataset.window = state.window;
    canvas.dataset.outline = state.outline ? "1" : "0";
    canvas.dataset.heat = state.heat ? "1" : "0";
    if (state.pending !== null) {
      state.timings.push(performance.now() - state.pending.t0);
      state.pending = null;
    }
    pos.textContent = "slice " + (state.index + 1) + " / " + state.meta.count +
      (slice.analysed ? "" : " (not analysed)") + (slice.outline ? " · outline" : "") + (slice.heat ? " · heat" : "");
    slider.value = String(state.index);
  }

  function go(index) {
    if (!state.meta) { return; }
    index = Math.max(0, Math.min(state.meta.count - 1, index));
    if (index === state.index && state.pending === null && canvas.dataset.index === String(index)) { return; }
    state.index = index;
    state.pending = { index: index, t0: performance.now() };
    draw();
  }

  function setWindow(name) {
    state.window = name;
    Array.prototype.forEach.call(windowsBox.querySelectorAll("button"), function (b) {
      b.classList.toggle("active", b.dataset.window === name);
      b.setAttribute("aria-pressed", b.dataset.window === name ? "true" : "false");
    });
    state.pending = { index: state.index, t0: performance.now() };
    preload();
    draw();
  }

  function start(jobId) {
    state.generation++;
    fetch("/api/viewer/jobs/" + encodeURIComponent(jobId), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(location.pathname)); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (meta) {
        state.meta = meta;
        state.images = {};
        state.overlays = {};
        state.loaded = 0;
        var firstKey = meta.jumps.filter(function (j) { return j.kind === "key" && !j.shadow; })[0];
        state.index = firstKey ? firstKey.index : Math.floor(meta.count / 2);
        slider.max = String(meta.count - 1);
        windowsBox.textContent = "";
        meta.windows.forEach(function (w) {
          var b = document.createElement("button");
          b.type = "button";
          b.textContent = w;
          b.dataset.window = w;
          b.id = "window-" + w;
          b.addEventListener("click", function () { setWindow(w); });
          windowsBox.appendChild(b);
        });
        jumpsBox.textContent = "";
        meta.jumps.forEach(function (j) {
          var b = document.createElement("button");
          b.type = "button";
          b.className = "jump jump-" + j.kind + (j.shadow ? " shadow" : "");
          b.textContent = (j.kind === "finding" ? "→ " : "") + j.text + " (" + (j.index + 1) + ")";
          b.dataset.index = String(j.index);
          b.addEventListener("click", function () { go(j.index); canvas.focus(); });
          jumpsBox.appendChild(b);
        });
        shadowBox.parentNode.hidden = !meta.slices.some(function (s) { return s.shadow; });
        root.dataset.job = String(meta.job_id);
        root.dataset.count = String(meta.count);
        canvas.dataset.index = "-1";
        setWindow(meta.default_window);
        preloadOverlays();
        root.dataset.ready = "1";
      })
      .catch(function (e) { pos.textContent = "viewer unavailable (" + e.message + ")"; });
  }

  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    go(state.index + (e.deltaY > 0 ? 1 : e.deltaY < 0 ? -1 : 0));
  }, { passive: false });
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (!state.meta || (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT"))) { return; }
    var step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 }[e.key];
    if (step !== undefined) { e.preventDefault(); go(state.index + step); return; }
    if (e.key === "Home") { e.preventDefault(); go(0); return; }
    if (e.key === "End") { e.preventDefault(); go(state.meta.count - 1); return; }
    if (e.key === "o") { outlineBox.click(); }
    if (e.key === "h") { heatBox.click(); }
  });
  slider.addEventListener("input", function () { go(parseInt(slider.value, 10)); });
  outlineBox.addEventListener("change", function () { state.outline = outlineBox.checked; draw(); });
  heatBox.addEventListener("change", function () { state.heat = heatBox.checked; draw(); });
  shadowBox.addEventListener("change", function () { state.shadow = shadowBox.checked; draw(); });
  seriesSelect.addEventListener("change", function () { start(seriesSelect.value); });
  start(root.dataset.job);
})();
