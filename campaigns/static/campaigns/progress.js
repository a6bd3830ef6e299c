// The live sending panel: poll the progress endpoint and rewrite the panel in place.
// Progressive enhancement: without this file the panel shows the numbers as of page load.
// A file, not an inline script: the Content-Security-Policy allows scripts from 'self' only.
(function () {
  "use strict";
  const POLL_MS = 3000;
  const panels = Array.from(document.querySelectorAll("[data-progress-url], #sending-panel[data-url]"));

  function timeText(iso, withDate) {
    if (!iso) return "—";
    const d = new Date(iso);
    const pad = n => String(n).padStart(2, "0");
    const t = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (!withDate) return t;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + t;
  }

  function set(root, field, text) {
    root.querySelectorAll('[data-field="' + field + '"]').forEach(el => { el.textContent = text; });
  }

  function apply(root, data) {
    root.querySelectorAll("progress").forEach(bar => {
      bar.max = Math.max(data.total, 1);
      bar.value = data.sent;
      bar.textContent = data.percent + "%";
    });
    set(root, "sent", data.sent);
    set(root, "total", data.total);
    set(root, "percent", data.percent);
    set(root, "status_label", data.status_label);
    root.querySelectorAll('[data-field="status_label"]').forEach(el => {
      el.className = el.className.replace(/\bcs-(draft|in_review|approved|sending|paused|sent|cancelled)\b/, "cs-" + data.status);
    });
    (data.stages || []).forEach(stage => {
      const li = root.querySelector('[data-stage="' + stage.key + '"]');
      if (!li) return;
      const count = li.querySelector(".cs-stage-count");
      if (count) count.textContent = stage.count;
      li.classList.toggle("cs-zero", !stage.count);
    });
    set(root, "per_minute", Math.round(data.per_minute));
    set(root, "eta", timeText(data.eta, false));
    set(root, "started_at", data.started_at ? timeText(data.started_at, true) : "not yet");
    set(root, "finished_at", timeText(data.finished_at, true));
    set(root, "duration", data.duration || "—");
    set(root, "hint", data.live ? "Updating every few seconds." : "");
  }

  // The sending panel sits inside the campaign's status box: its badge follows too.
  function scope(root) { return root.closest("#campaign-status") || root; }

  function poll(root, url) {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(r => r.ok ? r.json() : Promise.reject(r.status))
      .then(data => {
        apply(scope(root), data);
        root.dataset.live = data.live ? "1" : "0";
        if (root.dataset.status && root.dataset.status !== data.status) {
          set(scope(root), "hint", "Now " + data.status_label.toLowerCase() +
              (data.live ? "; updating every few seconds." : ".") + " Reload the page for the controls that apply now.");
        }
        if (data.live) setTimeout(() => poll(root, url), POLL_MS);
      })
      // A failed poll (a restart, a network blip) tries again, more slowly.
      .catch(() => setTimeout(() => poll(root, url), POLL_MS * 3));
  }

  panels.forEach(root => {
    const url = root.dataset.progressUrl || root.dataset.url;
    if (!url || root.dataset.live !== "1") return;
    set(root, "hint", "Updating every few seconds.");
    setTimeout(() => poll(root, url), POLL_MS);
  });
})();
