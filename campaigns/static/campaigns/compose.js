// Live recipient count while composing (progressive enhancement: the saved count shows
// without it). Loaded only on an editable form: a read-only viewer has no filters to change.
// A file, not an inline script: the Content-Security-Policy allows scripts from 'self' only.
(function () {
  const form = document.getElementById("campaign_form");
  const out = document.getElementById("id_audience_count");
  const countUrl = document.getElementById("cs-count-url");
  if (!form || !out || !countUrl) return;
  const names = ["category", "audience_locale", "audience_joined_after_0", "audience_joined_after_1",
                 "audience_joined_before_0", "audience_joined_before_1", "audience_attribute_name",
                 "audience_attribute_value", "audience_addresses"];
  let timer = null;
  let latest = 0;
  function value(name) { const el = form.elements[name]; return el ? el.value : ""; }
  function show(text) { out.value = text; }
  function refresh() {
    const p = new URLSearchParams();
    p.set("category", value("category"));
    p.set("audience_locale", value("audience_locale"));
    p.set("audience_attribute_name", value("audience_attribute_name"));
    p.set("audience_attribute_value", value("audience_attribute_value"));
    p.set("audience_addresses", value("audience_addresses"));
    const after = (value("audience_joined_after_0") + " " + value("audience_joined_after_1")).trim();
    const before = (value("audience_joined_before_0") + " " + value("audience_joined_before_1")).trim();
    if (after) p.set("audience_joined_after", after);
    if (before) p.set("audience_joined_before", before);
    // Answers can arrive out of order: only the one for the latest input may be shown.
    const mine = ++latest;
    fetch(countUrl.dataset.url + "?" + p.toString(), {credentials: "same-origin"})
      .then(r => (r.headers.get("content-type") || "").includes("json") ? r.json() : {error: "count unavailable (" + r.status + ")"})
      .then(d => {
        if (mine !== latest) return;
        show(d.error ? d.error : d.recipients + " recipient" + (d.recipients === 1 ? "" : "s") +
          (d.suppressed ? ", " + d.suppressed + " suppressed" : "") +
          (d.unmatched_list_addresses ? ", " + d.unmatched_list_addresses + " listed addresses match no member" : ""));
      })
      // A stale number would be worse than none while the filters have changed.
      .catch(() => { if (mine === latest) show("count unavailable"); });
  }
  function later() { clearTimeout(timer); timer = setTimeout(refresh, 300); }
  // "change" too: the calendar's "Today" and "Now" links set values without an input event.
  // Edits make the status panel's buttons act on something other than what is on screen.
  form.addEventListener("input", () => {
    document.querySelectorAll("#campaign-status .cs-needs-saved button").forEach(b => { b.disabled = true; });
    const note = document.getElementById("cs-unsaved");
    if (note) note.hidden = false;
  }, {once: true});
  names.forEach(n => { const el = form.elements[n]; if (el) { el.addEventListener("input", later); el.addEventListener("change", later); } });
  refresh();
})();
