/* The sessions list: starting a session (or starting one again) takes the sandbox a few
 * seconds, so the button says so and the form is not sent twice. */
(function () {
  "use strict";

  var form = document.getElementById("session-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      if (event.defaultPrevented) return;
      document.getElementById("create-session").classList.add("busy");
      document.getElementById("create-note").hidden = false;
    });
  }

  document.addEventListener("submit", function (event) {
    if (event.defaultPrevented) return;
    var button = event.target.querySelector("button[data-action]");
    if (button) button.classList.add("busy");
  });
})();
