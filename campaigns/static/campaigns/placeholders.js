// Placeholder buttons insert their text where the author was last typing (subject, text
// or HTML part). Without this file they are plain text to copy.
(function () {
  "use strict";
  const fields = ["id_subject_template", "id_text_template", "id_html_template"]
    .map(id => document.getElementById(id)).filter(Boolean);
  if (!fields.length) return;
  let target = fields[1] || fields[0];
  fields.forEach(f => f.addEventListener("focus", () => { target = f; }));
  document.querySelectorAll("button.cs-placeholder").forEach(button => {
    button.addEventListener("click", () => {
      const text = button.dataset.insert;
      const start = target.selectionStart ?? target.value.length;
      const end = target.selectionEnd ?? start;
      target.value = target.value.slice(0, start) + text + target.value.slice(end);
      target.focus();
      target.setSelectionRange(start + text.length, start + text.length);
      target.dispatchEvent(new Event("input", {bubbles: true}));
    });
  });
})();
