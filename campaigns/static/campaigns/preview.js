// The compose preview without a reload: posts the compose form as it is (nothing is
// saved) and puts the server-rendered result into the Preview panel. Without this file
// the Preview button submits the form to the same URL, which answers with a page.
(function () {
  "use strict";
  const form = document.getElementById("campaign_form");
  const button = document.getElementById("cs-preview-button");
  const panel = document.getElementById("cs-preview-result");
  if (!form || !button || !panel) return;
  let latest = 0;

  // Errors also go beside their field, as the admin shows them after a save.
  function markFields(errors) {
    document.querySelectorAll("ul.cs-preview-field-errors").forEach(ul => ul.remove());
    Object.entries(errors || {}).forEach(([name, messages]) => {
      const row = name === "preview_recipient"
        ? document.querySelector("#compose-preview .cs-preview-tools")
        : form.querySelector(".field-" + name);
      if (!row) return;
      const list = document.createElement("ul");
      list.className = "errorlist cs-preview-field-errors";
      messages.forEach(text => {
        const item = document.createElement("li");
        item.textContent = text;
        list.appendChild(item);
      });
      row.prepend(list);
    });
  }

  button.addEventListener("click", event => {
    event.preventDefault();
    const mine = ++latest;
    const data = new FormData(form);
    panel.setAttribute("aria-busy", "true");
    fetch(button.formAction, {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: {"Accept": "application/json"},
    })
      .then(r => (r.headers.get("content-type") || "").includes("json")
        ? r.json()
        // A sign-in page after a redirect: the session has ended.
        : Promise.reject(new Error(r.redirected ? "sign in again, then retry"
                                                : "the server answered " + r.status)))
      .then(d => {
        if (mine !== latest) return;  // an older answer after a newer request
        panel.innerHTML = d.html;
        markFields(d.errors);
        panel.scrollIntoView({block: "start"});
      })
      .catch(error => {
        if (mine !== latest) return;
        panel.textContent = "";
        const note = document.createElement("p");
        note.className = "errornote";
        note.textContent = "Preview unavailable: " + error.message;
        panel.appendChild(note);
      })
      .finally(() => { if (mine === latest) panel.removeAttribute("aria-busy"); });
  });
})();
