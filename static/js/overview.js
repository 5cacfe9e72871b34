/* The overview: the user's live feed (/ws/events/), newest first, and the latest host numbers
 * from its `metrics_update` messages. */
(function () {
  "use strict";

  var feed = document.getElementById("feed");
  if (!feed || !("WebSocket" in window)) return;
  var empty = document.getElementById("feed-empty");
  var state = document.getElementById("feed-state");
  var MAX_ITEMS = 50;

  var KINDS = {
    agent_created: "agent",
    build_started: "build",
    build_completed: "build",
    execution_started: "run",
    agent_completed: "batch",
    execution_completed: "run",
  };

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function describe(message) {
    var d = message.data || {};
    var parts = [];
    var agent = d.agent_id ? link("/agents/" + d.agent_id + "/", d.agent_name || "agent") : null;
    var run = d.execution_id ? link("/executions/" + d.execution_id + "/", String(d.execution_id).slice(0, 8)) : null;
    switch (message.type) {
      case "agent_created":
        parts.push("Agent ", agent, " created");
        break;
      case "build_started":
        parts.push("Building ", agent, " " + (d.version || ""));
        break;
      case "build_completed":
        parts.push("Build of ", agent, " " + (d.version || "") + " ", badge(d.status));
        break;
      case "execution_started":
        if (d.agent_count > 1) parts.push("Batch of " + d.agent_count + " runs started");
        else parts.push("Run ", run, " of ", agent, " started");
        break;
      case "agent_completed":
        parts.push("Run of ", agent, " in a batch ", badge(d.status));
        break;
      case "execution_completed":
        if (d.total_agents !== undefined) {
          parts.push("Batch finished: " + d.successful + " of " + d.total_agents + " succeeded");
        } else {
          parts.push("Run ", run, " of ", agent, " ", badge(d.status),
            d.duration_ms !== null && d.duration_ms !== undefined ? " in " + window.AIMOS.formatMs(d.duration_ms) : "");
        }
        break;
      default:
        parts.push(message.type);
    }
    return parts;
  }

  function badge(status) {
    var span = document.createElement("span");
    window.AIMOS.setBadge(span, status || "unknown");
    return span;
  }

  function show(message) {
    if (message.type === "metrics_update") {
      metrics(message.data || {});
      return;
    }
    if (empty) empty.hidden = true;
    var item = document.createElement("li");
    item.setAttribute("data-type", message.type);
    var time = document.createElement("time");
    time.textContent = window.AIMOS.formatTime(message.timestamp);
    item.appendChild(time);
    var kind = document.createElement("span");
    kind.className = "feed-kind";
    kind.textContent = KINDS[message.type] || "event";
    item.appendChild(kind);
    var text = document.createElement("span");
    describe(message).forEach(function (part) {
      if (part === null || part === undefined || part === "") return;
      text.appendChild(typeof part === "string" ? document.createTextNode(part) : part);
    });
    item.appendChild(text);
    feed.insertBefore(item, feed.firstChild);
    while (feed.children.length > MAX_ITEMS + 1) feed.removeChild(feed.lastChild.previousSibling || feed.lastChild);
    var active = document.getElementById("active-runs");
    if (active && message.type === "execution_started" && !(message.data.agent_count > 1)) {
      active.textContent = String((parseInt(active.textContent, 10) || 0) + 1);
    } else if (active && message.type === "execution_completed" && message.data.total_agents === undefined) {
      active.textContent = String(Math.max(0, (parseInt(active.textContent, 10) || 0) - 1));
    }
  }

  function metrics(data) {
    var cpu = document.getElementById("last-cpu_usage");
    var memory = document.getElementById("last-memory_usage");
    var score = document.getElementById("health-score");
    if (cpu && typeof data.cpu_usage === "number") cpu.textContent = data.cpu_usage.toFixed(1) + "%";
    if (memory && typeof data.memory_usage === "number") memory.textContent = data.memory_usage.toFixed(1) + "%";
    if (score && typeof data.system_health_score === "number") score.textContent = data.system_health_score.toFixed(2);
  }

  window.AIMOS.socket(function () { return feed.getAttribute("data-url"); }, {
    message: show,
    state: function (value) {
      state.setAttribute("data-state", value);
      state.textContent = { live: "live", connecting: "connecting", offline: "reconnecting" }[value] || value;
    },
    closed: function () {
      state.setAttribute("data-state", "offline");
      state.textContent = "disconnected";
    },
  });
})();
