/* The agent page: uploads with a progress bar (to the API, with the session cookie and the
 * CSRF header; without JavaScript the form posts to the page instead), and builds followed
 * live (each queued or building version polls its small JSON endpoint every second). */
(function () {
  "use strict";

  var form = document.getElementById("upload-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      var input = form.querySelector("input[type=file]");
      var file = input && input.files[0];
      if (!file || !window.XMLHttpRequest || !window.FormData) return; // the page view says what is missing
      event.preventDefault();
      upload(file);
    });
  }

  function upload(file) {
    var bar = document.getElementById("upload-bar");
    var box = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    var button = document.getElementById("upload-button");
    var limit = parseInt(form.getAttribute("data-limit"), 10);
    if (limit && file.size > limit) {
      showError("The file is " + size(file.size) + "; the limit is " + size(limit) + ".");
      return;
    }
    var body = new FormData();
    body.append("file", file, file.name);
    var request = new XMLHttpRequest();
    request.open("POST", form.getAttribute("data-api"));
    request.setRequestHeader("X-CSRFToken", window.AIMOS.csrfToken(form));
    request.setRequestHeader("Accept", "application/json");
    request.withCredentials = true;
    box.hidden = false;
    box.classList.remove("done");
    bar.style.width = "0%";
    button.disabled = true;
    status.classList.remove("error");
    status.textContent = "Uploading " + file.name + "…";
    request.upload.onprogress = function (event) {
      if (!event.lengthComputable) return;
      var percent = Math.round((event.loaded / event.total) * 100);
      bar.style.width = percent + "%";
      box.setAttribute("aria-valuenow", String(percent));
      status.textContent = "Uploading " + file.name + "… " + percent + "% of " + size(event.total);
    };
    request.onload = function () {
      var answer = {};
      try { answer = JSON.parse(request.responseText); } catch (e) { /* not JSON */ }
      if (request.status === 201) {
        bar.style.width = "100%";
        box.classList.add("done");
        status.textContent = "Uploaded " + (answer.version || "") + "; queued to build…";
        location.reload();
        return;
      }
      showError(describe(answer, request.status));
    };
    request.onerror = function () { showError("The upload failed: the server could not be reached."); };
    request.send(body);

    function showError(text) {
      box.hidden = true;
      button.disabled = false;
      status.classList.add("error");
      status.textContent = text;
    }
  }

  function describe(answer, code) {
    var text = answer.detail || "The upload failed (" + code + ").";
    (answer.errors || []).forEach(function (item) {
      if (item.message && item.message !== answer.detail) text += " " + item.message;
    });
    return text;
  }

  function size(bytes) {
    if (bytes < 1024) return bytes + " bytes";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  /* --- builds ------------------------------------------------------------------------------ */

  var building = document.querySelectorAll(".version[data-poll]");
  Array.prototype.forEach.call(building, function (row) { poll(row); });

  function poll(row) {
    var url = row.getAttribute("data-poll");
    var log = row.querySelector("[data-log]");
    var badge = row.querySelector(".badge");
    var agentBadge = document.getElementById("agent-status");
    var failures = 0;
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error(String(response.status));
          return response.json();
        })
        .then(function (build) {
          failures = 0;
          window.AIMOS.setBadge(badge, build.status);
          window.AIMOS.setBadge(agentBadge, build.agent_status);
          if (build.build_log) {
            var follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
            log.textContent = build.build_log;
            if (follow) log.scrollTop = log.scrollHeight;
          }
          if (build.done) {
            row.removeAttribute("data-poll");
            // The run form, the current version and the agent's status all change with a
            // finished build: show the page as it now is.
            setTimeout(function () { location.reload(); }, 300);
            return;
          }
          setTimeout(tick, 1000);
        })
        .catch(function () {
          failures += 1;
          setTimeout(tick, Math.min(1000 * Math.pow(2, failures), 15000));
        });
    }
    tick();
  }
})();
