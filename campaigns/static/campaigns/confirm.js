// Forms marked data-confirm ask before they post (a file: the CSP forbids inline handlers).
(function () {
  "use strict";
  document.querySelectorAll("form[data-confirm]").forEach(form => {
    form.addEventListener("submit", event => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
