/* The execution page: the run followed live over /ws/executions/<id>/ from the last event the
 * server rendered (`?after=`), text deltas appended as they come, every other event an item
 * (the same items as executions.views.transcript renders); the status badge, the controls,
 * the output and the checkpoints follow the events. Pause, resume and cancel are sent with
 * fetch; without JavaScript they are plain forms. */
(function () {
  "use strict";

  var root = document.getElementById("execution");
  if (!root) return;

  var ACTIVE = ["pending", "running", "paused"];
  var FINAL = {
    run_completed: ["completed", "Completed"],
    run_failed: ["failed", "Failed"],
    run_cancelled: ["cancelled", "Cancelled"],
    run_timed_out: ["timed_out", "Timed out"],
  };
  var PLACEHOLDER = "00000000-0000-0000-0000-000000000000";

  var transcript = document.getElementById("transcript");
  var empty = document.getElementById("transcript-empty");
  var streamState = document.getElementById("stream-state");
  var last = parseInt(root.getAttribute("data-last-seq"), 10) || 0;
  var status = root.getAttribute("data-status");
  var stream = null;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function pretty(value) {
    return JSON.stringify(value === undefined ? null : value, null, 2);
  }

  /* --- status and controls ----------------------------------------------------------------- */

  function setStatus(next) {
    if (!next || next === status) return;
    status = next;
    root.setAttribute("data-status", next);
    window.AIMOS.setBadge(document.getElementById("execution-status"), next);
    var forms = document.querySelectorAll("form[data-show-when]");
    Array.prototype.forEach.call(forms, function (form) {
      var when = form.getAttribute("data-show-when").split(" ");
      form.hidden = when.indexOf(next) === -1;
    });
    if (ACTIVE.indexOf(next) === -1) setStream("done");
  }

  function setStream(state) {
    if (!streamState) return;
    if (streamState.getAttribute("data-state") === "done") return;
    streamState.setAttribute("data-state", state);
    streamState.textContent = { live: "live", connecting: "connecting", offline: "reconnecting", done: "finished" }[state] || state;
  }

  var note = document.getElementById("control-message");
  function say(text, isError) {
    note.hidden = !text;
    note.textContent = text || "";
    note.classList.toggle("is-error", !!isError);
  }

  Array.prototype.forEach.call(document.querySelectorAll("form[data-control]"), function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var buttons = document.querySelectorAll("#controls button");
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
      var verb = form.getAttribute("data-control");
      say({ pause: "Pausing…", resume: "Resuming…", cancel: "Cancelling… every process of the run is being stopped." }[verb]);
      window.AIMOS.postForm(form)
        .then(function (answer) {
          if (answer.body.status) setStatus(answer.body.status);
          say(answer.body.detail, !answer.ok);
        })
        .catch(function () { say("The server could not be reached; try again.", true); })
        .then(function () {
          Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
        });
    });
  });

  /* --- events ------------------------------------------------------------------------------ */

  function following() {
    return transcript.scrollTop + transcript.clientHeight >= transcript.scrollHeight - 24;
  }

  function add(node, seq) {
    node.setAttribute("data-seq", String(seq));
    transcript.appendChild(node);
    return node;
  }

  function lastItem() {
    var items = transcript.querySelectorAll(".t-item");
    return items.length ? items[items.length - 1] : null;
  }

  function tool(kind, label, data, value, seq) {
    var node = el("div", "t-item t-tool " + kind);
    var head = el("div", "t-head");
    head.appendChild(el("span", "t-kind", label));
    head.appendChild(el("code", "", data.name || ""));
    head.appendChild(el("span", "t-id", data.call_id || ""));
    node.appendChild(head);
    node.appendChild(el("pre", "", pretty(value)));
    return add(node, seq);
  }

  function statusLine(text, seq, final) {
    var node = el("div", "t-item t-status" + (final ? " t-final t-" + final : ""));
    node.appendChild(el("span", "", text));
    return add(node, seq);
  }

  function render(event) {
    var data = event.data && typeof event.data === "object" ? event.data : { value: event.data };
    var seq = event.seq;
    switch (event.type) {
      case "content_delta": {
        var previous = lastItem();
        var text = String(data.content === undefined ? "" : data.content);
        if (previous && previous.classList.contains("t-text")) {
          if (previous.lastChild && previous.lastChild.nodeType === 3) previous.lastChild.appendData(text);
          else previous.appendChild(document.createTextNode(text));
        } else {
          add(el("div", "t-item t-text", text), seq);
        }
        break;
      }
      case "tool_call":
        tool("t-call", "Tool call", data, data.args, seq);
        break;
      case "tool_result":
        tool("t-result", "Tool result", data, data.result, seq);
        break;
      case "log": {
        var level = String(data.level || "info");
        var line = el("div", "t-item t-log t-log-" + level.toLowerCase());
        line.appendChild(el("span", "t-level", level));
        line.appendChild(el("span", "t-source", data.source || ""));
        line.appendChild(el("span", "t-msg", data.message === undefined ? "" : String(data.message)));
        add(line, seq);
        break;
      }
      case "checkpoint": {
        var mark = el("div", "t-item t-checkpoint");
        mark.appendChild(el("span", "t-kind", "Checkpoint"));
        mark.appendChild(document.createTextNode(" " + (data.label || "(no label)")));
        add(mark, seq);
        addCheckpoint(data, seq);
        break;
      }
      case "error": {
        var problem = el("div", "t-item t-error");
        problem.appendChild(el("span", "t-kind", "Error"));
        problem.appendChild(document.createTextNode(" " + (data.message || "")));
        add(problem, seq);
        break;
      }
      case "run_started":
        statusLine("Run started (" + (data.version || "") + ")", seq);
        setMoment("started-at", event.timestamp);
        if (status === "pending") setStatus("running");
        break;
      case "run_paused":
        statusLine("Paused", seq);
        setStatus("paused");
        break;
      case "run_resumed":
        statusLine("Resumed", seq);
        setStatus("running");
        break;
      case "run_completed":
      case "run_failed":
      case "run_cancelled":
      case "run_timed_out":
        finish(event.type, data, seq, event.timestamp);
        break;
      default: {
        var other = el("div", "t-item t-event");
        var head = el("div", "t-head");
        head.appendChild(el("span", "t-kind", event.type));
        other.appendChild(head);
        other.appendChild(el("pre", "", pretty(data)));
        add(other, seq);
      }
    }
  }

  function setMoment(id, iso) {
    var cell = document.getElementById(id);
    if (!cell) return;
    cell.textContent = "";
    cell.appendChild(window.AIMOS.timeElement(iso));
  }

  function finish(type, data, seq, timestamp) {
    var final = FINAL[type];
    var detail = data.error || data.reason || "";
    statusLine(final[1] + (detail ? ": " + detail : ""), seq, type);
    setStatus(final[0]);
    setMoment("finished-at", timestamp);
    if (type === "run_completed") {
      document.getElementById("output").textContent = pretty(data.output);
      document.getElementById("output-card").hidden = false;
      var metrics = data.metrics || {};
      document.getElementById("duration").textContent = window.AIMOS.formatMs(metrics.duration_ms);
      document.getElementById("cpu").textContent = window.AIMOS.formatMs(metrics.cpu_ms);
      if (metrics.peak_memory_mb !== null && metrics.peak_memory_mb !== undefined) {
        document.getElementById("memory").textContent = Number(metrics.peak_memory_mb).toFixed(1) + " MB";
      }
    } else if (detail) {
      var card = document.getElementById("error-card");
      card.classList.toggle("card-neutral", type === "run_cancelled");
      card.classList.toggle("card-danger", type !== "run_cancelled");
      card.querySelector("h2").textContent = final[1] + (data.error_type ? " · " + data.error_type : "");
      document.getElementById("error-message").textContent = detail;
      card.hidden = false;
    }
  }

  function addCheckpoint(data, seq) {
    var list = document.getElementById("checkpoints");
    var template = document.getElementById("checkpoint-template");
    if (!list || !template || !data.checkpoint_id) return;
    if (list.querySelector('[data-checkpoint="' + data.checkpoint_id + '"]')) return;
    var item = template.content.firstElementChild.cloneNode(true);
    item.setAttribute("data-checkpoint", data.checkpoint_id);
    item.querySelector("[data-label]").textContent = data.label || "(no label)";
    item.querySelector("[data-seq]").textContent = String(seq);
    Array.prototype.forEach.call(item.querySelectorAll("form"), function (form) {
      form.setAttribute("action", form.getAttribute("action").replace(PLACEHOLDER, data.checkpoint_id));
    });
    list.appendChild(item);
    document.getElementById("checkpoints-empty").hidden = true;
    var count = document.getElementById("checkpoint-count");
    count.textContent = String(list.children.length);
  }

  function receive(event) {
    if (typeof event.seq !== "number" || event.seq <= last) return;
    var follow = following();
    last = event.seq;
    document.getElementById("event-count").textContent = String(last);
    if (empty) empty.hidden = true;
    render(event);
    if (follow) transcript.scrollTop = transcript.scrollHeight;
  }

  transcript.scrollTop = transcript.scrollHeight;
  if (ACTIVE.indexOf(status) !== -1 && "WebSocket" in window) {
    stream = window.AIMOS.socket(
      function () { return root.getAttribute("data-ws") + "?after=" + last; },
      {
        message: receive,
        state: setStream,
        closed: function (code) {
          if (code === 1000) setStream("done");
          else setStream("offline");
        },
      }
    );
  }
  window.addEventListener("pagehide", function () { if (stream) stream.stop(); });
})();
