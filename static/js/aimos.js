/* AIMOS dashboard: what every page shares. Plain JavaScript, no build step.
 *
 * - forms with data-confirm ask before they submit;
 * - buttons with data-copy="<selector>" copy that element's text (or value);
 * - the selects of a filter form (form.filters) apply at once;
 * - textareas with data-json are checked as JSON while typing and before their form submits
 *   (empty is allowed: the server decides what empty means); the message goes to the
 *   [data-json-error] element of the same form;
 * - window.AIMOS offers postForm() (a form sent with fetch, answered in JSON), socket()
 *   (a WebSocket that reconnects) and small formatting helpers for the page scripts.
 */
(function () {
  "use strict";

  function csrfToken(form) {
    var input = form && form.querySelector("input[name=csrfmiddlewaretoken]");
    if (input) return input.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  /* Send a dashboard form with fetch; resolves to {ok, status, body}. */
  function postForm(form) {
    return fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken(form) },
    }).then(function (response) {
      return response
        .json()
        .catch(function () { return { detail: "Unexpected answer from the server (" + response.status + ")." }; })
        .then(function (body) { return { ok: response.ok, status: response.status, body: body }; });
    });
  }

  /* A WebSocket to `path` that reconnects with a growing delay until `stop()` or until the
   * server closes normally (1000) or refuses (4xxx). `url()` is called at each attempt, so
   * the caller can resume from what it already has. */
  function socket(url, handlers) {
    var delay = 500;
    var stopped = false;
    var current = null;
    function connect() {
      if (stopped) return;
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      current = new WebSocket(scheme + location.host + url());
      if (handlers.state) handlers.state("connecting");
      current.onopen = function () {
        delay = 500;
        if (handlers.state) handlers.state("live");
      };
      current.onmessage = function (event) {
        var message;
        try { message = JSON.parse(event.data); } catch (e) { return; }
        handlers.message(message);
      };
      current.onclose = function (event) {
        if (stopped) return;
        if (event.code === 1000 || (event.code >= 4000 && event.code < 5000)) {
          stopped = true;
          if (handlers.closed) handlers.closed(event.code);
          return;
        }
        if (handlers.state) handlers.state("offline");
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      };
    }
    connect();
    return {
      stop: function () {
        stopped = true;
        if (current) current.close();
      },
    };
  }

  function jsonProblem(text) {
    if (!text.trim()) return "";
    try {
      JSON.parse(text);
      return "";
    } catch (error) {
      return "Not valid JSON: " + error.message.replace(/^JSON\.parse: /, "");
    }
  }

  function checkJson(textarea) {
    var problem = jsonProblem(textarea.value);
    var form = textarea.form;
    var box = textarea.parentElement.querySelector("[data-json-error]") ||
      (form && form.querySelector("[data-json-error]"));
    textarea.classList.toggle("invalid", !!problem);
    textarea.setAttribute("aria-invalid", problem ? "true" : "false");
    if (box) {
      box.textContent = problem;
      box.hidden = !problem;
    }
    return !problem;
  }

  function copy(button) {
    var target = document.querySelector(button.getAttribute("data-copy"));
    if (!target) return;
    var text = "value" in target && target.tagName !== "PRE" ? target.value : target.textContent;
    function done() {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(); });
    } else {
      fallback();
    }
    function fallback() {
      if (target.select) target.select();
      else {
        var range = document.createRange();
        range.selectNodeContents(target);
        var selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
      }
      try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected */ }
    }
  }

  function formatTime(iso) {
    var date = iso ? new Date(iso) : new Date();
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  /* "Nov 22, 14:05:09" in the reader's time zone. */
  function formatDate(iso) {
    var date = iso ? new Date(iso) : new Date();
    return date.toLocaleString([], {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    });
  }

  /* The server writes moments in UTC; show them in the reader's time zone. */
  function localizeTimes(root) {
    var times = (root || document).querySelectorAll("time[data-local]");
    Array.prototype.forEach.call(times, function (node) {
      var iso = node.getAttribute("datetime");
      if (!iso) return;
      node.title = iso;
      node.textContent = formatDate(iso);
    });
  }

  /* A <time> element for a moment, as the server's `timestamp` tag writes it. */
  function timeElement(iso) {
    var node = document.createElement("time");
    node.setAttribute("datetime", iso || new Date().toISOString());
    node.setAttribute("data-local", "");
    node.title = node.getAttribute("datetime");
    node.textContent = formatDate(iso);
    return node;
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1000) return Math.round(ms) + " ms";
    var seconds = ms / 1000;
    if (seconds < 60) return seconds.toFixed(1) + " s";
    var minutes = Math.floor(seconds / 60);
    var rest = Math.floor(seconds % 60);
    return minutes + " min " + (rest < 10 ? "0" : "") + rest + " s";
  }

  function setBadge(badge, status) {
    if (!badge) return;
    badge.className = "badge badge-" + status;
    badge.setAttribute("data-status", status);
    badge.textContent = status === "timed_out" ? "timed out" : status;
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var fields = form.querySelectorAll("textarea[data-json]");
    for (var i = 0; i < fields.length; i++) {
      if (!checkJson(fields[i])) {
        event.preventDefault();
        event.stopImmediatePropagation();
        fields[i].focus();
        return;
      }
    }
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  /* Filters apply as soon as a choice changes; the Filter button stays for typed searches. */
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches && target.matches("form.filters select")) target.form.submit();
  });

  document.addEventListener("input", function (event) {
    if (event.target.matches && event.target.matches("textarea[data-json]")) checkJson(event.target);
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy]");
    if (button) {
      event.preventDefault();
      copy(button);
    }
  });

  localizeTimes(document);

  window.AIMOS = {
    formatDate: formatDate,
    timeElement: timeElement,
    csrfToken: csrfToken,
    postForm: postForm,
    socket: socket,
    formatTime: formatTime,
    formatMs: formatMs,
    setBadge: setBadge,
    checkJson: checkJson,
  };
})();
