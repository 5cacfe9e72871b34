/* The session page. Everything is done through the JSON API of the session
 * (/api/v1/sessions/<id>/…) with the dashboard's session cookie and its CSRF header:
 *
 * - the file tree (folders open on click, read when first opened), the editor (a file opened
 *   from the tree, or a new path; Save writes the whole file);
 * - the shell: a command's stdout and stderr as they come (the API's event stream), then its
 *   exit code;
 * - processes: start, stop, and one process's log followed as it writes;
 * - tasks: a run of an agent in the workspace, its events followed live over the session's
 *   WebSocket (/ws/sessions/<id>/: {type, data, timestamp}); when that socket is not there or
 *   drops during a task, over the run's own WebSocket from its first event instead;
 * - the session's status: a starting session is waited for; a change of status reloads the
 *   page, which then shows what can be done.
 */
(function () {
  "use strict";

  var root = document.getElementById("session");
  if (!root) return;

  var API = root.getAttribute("data-api");
  var status = root.getAttribute("data-status");
  var LIVE = ["starting", "active", "paused"];

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function pretty(value) {
    return JSON.stringify(value === undefined ? null : value, null, 2);
  }

  function token() {
    return window.AIMOS.csrfToken(document.querySelector("#session form"));
  }

  function query(params) {
    var parts = [];
    Object.keys(params).forEach(function (key) {
      parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(params[key]));
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  /* One call of the API: resolves to {ok, status, body}; rejects when the server cannot be
   * reached. */
  function call(method, path, body) {
    var headers = { Accept: "application/json", "X-CSRFToken": token() };
    var options = { method: method, credentials: "same-origin", headers: headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(API + path, options).then(answer);
  }

  function answer(response) {
    if (response.status === 204) return { ok: true, status: 204, body: {} };
    return response
      .json()
      .catch(function () { return { detail: "Unexpected answer from the server (" + response.status + ")." }; })
      .then(function (body) { return { ok: response.ok, status: response.status, body: body }; });
  }

  /* What a refusal says: its detail, then the field messages that add to it. */
  function describe(result) {
    var body = result.body || {};
    var text = body.detail || "The request failed (" + result.status + ").";
    (body.errors || []).forEach(function (item) {
      if (item.message && item.message !== body.detail) text += " " + item.message;
    });
    return text;
  }

  var UNREACHABLE = "The server could not be reached; try again.";

  /* A server-sent event stream of the API, read with fetch (so it can be a POST and carry the
   * CSRF header): `onEvent(kind, data)` for each frame. Resolves when the stream ends; rejects
   * with {status, body} when the server refused before streaming. */
  function stream(method, path, body, onEvent, signal) {
    var headers = { Accept: "text/event-stream", "X-CSRFToken": token() };
    var options = { method: method, credentials: "same-origin", headers: headers, signal: signal };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(API + path, options).then(function (response) {
      if (!response.ok || !response.body) {
        return answer(response).then(function (result) { throw result; });
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function frame(text) {
        var kind = "message";
        var data = [];
        text.split("\n").forEach(function (line) {
          if (!line || line.charAt(0) === ":") return;
          var colon = line.indexOf(":");
          var field = colon === -1 ? line : line.slice(0, colon);
          var value = colon === -1 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") kind = value;
          else if (field === "data") data.push(value);
        });
        if (!data.length) return;
        var parsed;
        try { parsed = JSON.parse(data.join("\n")); } catch (e) { parsed = { data: data.join("\n") }; }
        onEvent(kind, parsed);
      }
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) {
            buffer += decoder.decode();
            if (buffer.trim()) frame(buffer);
            return;
          }
          buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
          var frames = buffer.split("\n\n");
          buffer = frames.pop();
          frames.forEach(frame);
          return pump();
        });
      }
      return pump();
    });
  }

  var message = $("session-message");
  function say(text, isError) {
    message.hidden = !text;
    message.textContent = text || "";
    message.classList.toggle("is-error", !!isError);
  }

  /* --- status ------------------------------------------------------------------------------ */

  function statusChanged(next) {
    if (!next || next === status) return;
    if (next === "deleted") {
      location.href = "/sessions/";
      return;
    }
    status = next;
    window.AIMOS.setBadge($("session-status"), next);
    $("details-status").textContent = next;
    // What the page offers depends on the status: show it as it now is.
    say("The session is " + next + "; reloading…");
    setTimeout(function () { location.reload(); }, 400);
  }

  /* A starting session is waited for (also without the socket), then the page reloads. */
  function waitWhileStarting() {
    var delay = 1000;
    function tick() {
      if (status !== "starting") return;
      call("GET", "")
        .then(function (result) {
          if (result.ok) statusChanged(result.body.status);
          else if (result.status === 404) location.href = "/sessions/";
        })
        .catch(function () { /* next tick */ })
        .then(function () {
          delay = Math.min(delay * 1.5, 5000);
          if (status === "starting") setTimeout(tick, delay);
        });
    }
    setTimeout(tick, delay);
  }
  if (status === "starting") waitWhileStarting();

  /* --- the file tree ---------------------------------------------------------------------- */

  var tree = $("file-tree");
  var selected = null; // the path open in the editor

  function parentOf(path) {
    var at = path.lastIndexOf("/");
    return at === -1 ? "" : path.slice(0, at);
  }

  function sizeText(bytes) {
    if (bytes === null || bytes === undefined) return "";
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  function node(entry) {
    var item = el("li");
    item.setAttribute("role", "treeitem");
    item.setAttribute("data-path", entry.path);
    item.setAttribute("data-type", entry.type);
    var button = el("button", "tree-item");
    button.type = "button";
    var icon = el("span", "tree-icon");
    button.appendChild(icon);
    button.appendChild(el("span", "tree-name", entry.name));
    if (entry.type === "directory") {
      icon.textContent = "▸";
      item.setAttribute("aria-expanded", "false");
      var children = el("ul");
      children.setAttribute("role", "group");
      children.setAttribute("data-path", entry.path);
      children.hidden = true;
      item.appendChild(button);
      item.appendChild(children);
    } else {
      icon.textContent = entry.type === "file" ? "·" : "↪";
      if (entry.type === "file") {
        button.appendChild(el("span", "tree-size", sizeText(entry.size)));
        button.setAttribute("aria-selected", entry.path === selected ? "true" : "false");
      } else {
        button.disabled = true;
        button.title = entry.type === "symlink" ? "A symbolic link: never followed" : "Not a regular file";
      }
      item.appendChild(button);
    }
    return item;
  }

  /* Read the folder `list` shows and draw its entries; folders that were open stay open
   * (read again). */
  function load(list) {
    var path = list.getAttribute("data-path");
    var open = [];
    Array.prototype.forEach.call(list.querySelectorAll(":scope > li[aria-expanded=true]"), function (item) {
      open.push(item.getAttribute("data-path"));
    });
    list.setAttribute("aria-busy", "true");
    return call("GET", "/files" + query({ path: path }))
      .then(function (result) {
        list.textContent = "";
        if (!result.ok) {
          showTreeError(list, describe(result));
          return;
        }
        if (list === tree) $("tree-error").hidden = true;
        var entries = result.body.entries || [];
        entries.forEach(function (entry) { list.appendChild(node(entry)); });
        if (result.body.truncated) list.appendChild(el("li", "tree-note", "… more entries than shown"));
        if (list === tree) $("tree-empty").hidden = entries.length > 0;
        else if (!entries.length) list.appendChild(el("li", "tree-note", "empty"));
        var reopened = [];
        Array.prototype.forEach.call(list.querySelectorAll(":scope > li[data-type=directory]"), function (item) {
          if (open.indexOf(item.getAttribute("data-path")) !== -1) reopened.push(expand(item));
        });
        return Promise.all(reopened);
      })
      .catch(function () { showTreeError(list, UNREACHABLE); })
      .then(function () { list.removeAttribute("aria-busy"); });
  }

  function showTreeError(list, text) {
    if (list === tree) {
      $("tree-error").textContent = text;
      $("tree-error").hidden = false;
    } else {
      list.textContent = "";
      list.appendChild(el("li", "tree-note error", text));
    }
  }

  function expand(item) {
    var list = item.querySelector(":scope > ul");
    item.setAttribute("aria-expanded", "true");
    item.querySelector(".tree-icon").textContent = "▾";
    list.hidden = false;
    return load(list);
  }

  function collapse(item) {
    item.setAttribute("aria-expanded", "false");
    item.querySelector(".tree-icon").textContent = "▸";
    item.querySelector(":scope > ul").hidden = true;
  }

  function listOf(path) {
    if (!path) return tree;
    return tree.querySelector('ul[data-path="' + CSS.escape(path) + '"]');
  }

  /* Draw a folder again if it is shown (its nearest shown ancestor otherwise). */
  function refresh(path) {
    var folder = path;
    while (true) {
      var list = listOf(folder);
      if (list && (list === tree || !list.hidden)) return load(list);
      if (!folder) return Promise.resolve();
      folder = parentOf(folder);
    }
  }

  /* A command may change many files at once: each folder is read again once for them all. */
  var refreshing = {};
  function refreshSoon(folder) {
    if (refreshing[folder]) return;
    refreshing[folder] = setTimeout(function () {
      delete refreshing[folder];
      refresh(folder);
    }, 100);
  }

  function select(path) {
    selected = path;
    Array.prototype.forEach.call(tree.querySelectorAll("li[data-type=file] > .tree-item"), function (button) {
      button.setAttribute("aria-selected", button.parentNode.getAttribute("data-path") === path ? "true" : "false");
    });
  }

  if (tree) {
    tree.addEventListener("click", function (event) {
      var button = event.target.closest(".tree-item");
      if (!button || button.disabled) return;
      var item = button.parentNode;
      if (item.getAttribute("data-type") === "directory") {
        if (item.getAttribute("aria-expanded") === "true") collapse(item);
        else expand(item);
      } else {
        open(item.getAttribute("data-path"));
      }
    });
    $("tree-refresh").addEventListener("click", function () { load(tree); });
    load(tree);
  }

  /* --- the editor --------------------------------------------------------------------------- */

  var editor = $("editor");
  var pathInput = $("file-path");
  var content = $("file-content");
  var fileStatus = $("file-status");

  function fileSay(text, isError) {
    fileStatus.textContent = text || "";
    fileStatus.classList.toggle("is-error", !!isError);
  }

  function setEditable(editable, note) {
    content.readOnly = !editable;
    $("file-save").disabled = !editable;
    if (note !== undefined) fileSay(note);
  }

  function showFileActions(path) {
    var download = $("file-download");
    download.hidden = !path;
    $("file-delete").hidden = !path;
    if (path) download.href = API + "/files/download" + query({ path: path });
  }

  /* Whether what the editor holds may be replaced: nothing unsaved, or the user says so. */
  function discardOk() {
    if (content.readOnly || content.value === (content.getAttribute("data-saved") || "")) return true;
    return window.confirm("Discard the changes you have not saved?");
  }

  function open(path) {
    if (!discardOk()) return Promise.resolve();
    select(path);
    pathInput.value = path;
    content.value = "";
    setEditable(false, "Opening " + path + "…");
    showFileActions(null);
    return call("GET", "/files/content" + query({ path: path }))
      .then(function (result) {
        if (selected !== path) return; // another file was opened meanwhile
        if (!result.ok) {
          fileSay(describe(result), true);
          return;
        }
        var file = result.body;
        content.setAttribute("data-saved", file.encoding === "utf-8" ? file.content : "");
        showFileActions(path);
        if (file.encoding !== "utf-8") {
          content.value = "";
          setEditable(false, "A binary file of " + sizeText(file.size) + ": download it to see it.");
        } else if (!file.eof) {
          content.value = file.content;
          setEditable(false, "Only the first " + sizeText(file.length) + " of " + sizeText(file.size) + " are shown: too large to edit here.");
        } else {
          content.value = file.content;
          setEditable(true, sizeText(file.size));
        }
        content.scrollTop = 0;
      })
      .catch(function () { fileSay(UNREACHABLE, true); });
  }

  if (editor) {
    editor.addEventListener("submit", function (event) {
      event.preventDefault();
      var path = pathInput.value.trim().replace(/^\/+/, "").replace(/^workspace\//, "");
      if (!path) {
        fileSay("Give the file a path in the workspace.", true);
        pathInput.focus();
        return;
      }
      var save = $("file-save");
      save.disabled = true;
      fileSay("Saving " + path + "…");
      call("POST", "/files/content", { path: path, content: content.value })
        .then(function (result) {
          if (!result.ok) {
            fileSay(describe(result), true);
            return;
          }
          pathInput.value = result.body.path;
          content.setAttribute("data-saved", content.value);
          fileSay("Saved " + result.body.path + " (" + sizeText(result.body.size) + ").");
          showFileActions(result.body.path);
          selected = result.body.path;
          return refresh(parentOf(result.body.path)).then(function () { select(result.body.path); });
        })
        .catch(function () { fileSay(UNREACHABLE, true); })
        .then(function () { save.disabled = content.readOnly; });
    });

    $("file-new").addEventListener("click", function () {
      if (!discardOk()) return;
      select(null);
      content.setAttribute("data-saved", "");
      pathInput.value = "";
      content.value = "";
      setEditable(true, "A new file: type its path and its text, then save.");
      showFileActions(null);
      pathInput.focus();
    });

    $("file-delete").addEventListener("click", function () {
      var path = pathInput.value.trim();
      if (!path || !window.confirm("Delete " + path + " from the workspace?")) return;
      call("DELETE", "/files" + query({ path: path }))
        .then(function (result) {
          if (!result.ok) {
            fileSay(describe(result), true);
            return;
          }
          select(null);
          pathInput.value = "";
          content.value = "";
          content.setAttribute("data-saved", "");
          showFileActions(null);
          fileSay("Deleted " + path + ".");
          return refresh(parentOf(path));
        })
        .catch(function () { fileSay(UNREACHABLE, true); });
    });

    window.addEventListener("beforeunload", function (event) {
      if (content.readOnly || content.value === (content.getAttribute("data-saved") || "")) return;
      event.preventDefault();
      event.returnValue = "";
    });

    // Tab indents in the editor instead of leaving it.
    content.addEventListener("keydown", function (event) {
      if (event.key !== "Tab" || event.shiftKey || content.readOnly) return;
      event.preventDefault();
      var start = content.selectionStart;
      content.setRangeText("    ", start, content.selectionEnd, "end");
    });
  }

  /* --- the shell ---------------------------------------------------------------------------- */

  var shellForm = $("shell-form");
  var shellLog = $("shell-log");
  var MAX_RUNS = 20;
  var history = [];
  var historyAt = 0;

  function exitBadge(badge, text, good) {
    badge.className = "shell-exit badge " + (good ? "badge-exit-ok" : "badge-exit-bad");
    badge.setAttribute("data-status", good ? "ok" : "error");
    badge.textContent = text;
  }

  if (shellForm) {
    shellForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var command = $("shell-command").value;
      if (!command.trim()) return;
      var timeout = parseFloat($("shell-timeout").value) || 30;
      history.push(command);
      historyAt = history.length;
      var run = $("shell-run-template").content.firstElementChild.cloneNode(true);
      run.querySelector(".shell-cmd").textContent = command;
      shellLog.appendChild(run);
      while (shellLog.children.length > MAX_RUNS) shellLog.removeChild(shellLog.firstElementChild);
      var stdout = run.querySelector(".shell-stdout");
      var stderr = run.querySelector(".shell-stderr");
      var badge = run.querySelector(".shell-exit");
      var problem = run.querySelector(".shell-error");
      var button = $("shell-run");
      button.disabled = true;
      $("shell-command").value = "";
      var ended = false;
      function append(pre, text) {
        pre.hidden = false;
        var follow = shellLog.scrollTop + shellLog.clientHeight >= shellLog.scrollHeight - 24;
        pre.appendChild(document.createTextNode(text));
        if (follow) shellLog.scrollTop = shellLog.scrollHeight;
      }
      function fail(text) {
        ended = true;
        exitBadge(badge, "error", false);
        problem.textContent = text;
        problem.hidden = false;
      }
      stream("POST", "/shell", { command: command, timeout: timeout, stream: true }, function (kind, data) {
        if (kind === "stdout") append(stdout, data.data || "");
        else if (kind === "stderr") append(stderr, data.data || "");
        else if (kind === "exit") {
          ended = true;
          if (data.timed_out) exitBadge(badge, "timed out", false);
          else exitBadge(badge, "exit " + data.exit_code, data.exit_code === 0);
          run.setAttribute("data-exit-code", String(data.exit_code));
          if (data.truncated) {
            problem.textContent = "Output past 1 MiB was discarded.";
            problem.hidden = false;
          }
        } else if (kind === "error") fail(data.detail || "The command failed.");
      })
        .then(function () { if (!ended) fail("The output ended before the command did."); })
        .catch(function (result) { fail(result && result.status ? describe(result) : UNREACHABLE); })
        .then(function () {
          button.disabled = false;
          $("shell-command").focus();
          shellLog.scrollTop = shellLog.scrollHeight;
          // A command may have changed the files: draw the shown folders again.
          if (tree) load(tree);
        });
    });

    $("shell-command").addEventListener("keydown", function (event) {
      if (event.key === "ArrowUp" && historyAt > 0) {
        historyAt -= 1;
      } else if (event.key === "ArrowDown" && historyAt < history.length) {
        historyAt += 1;
      } else {
        return;
      }
      event.preventDefault();
      event.target.value = history[historyAt] || "";
    });

    $("shell-clear").addEventListener("click", function () { shellLog.textContent = ""; });
  }

  /* --- processes ---------------------------------------------------------------------------- */

  var processRows = $("process-rows");
  var following = null; // {pid, controller}

  function processSay(text) {
    var box = $("process-error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function processRow(entry) {
    var row = el("tr");
    row.setAttribute("data-pid", String(entry.pid));
    row.setAttribute("data-status", entry.status);
    row.setAttribute("aria-selected", following && following.pid === entry.pid ? "true" : "false");
    row.appendChild(el("td", "num mono", String(entry.pid)));
    var what = el("td");
    if (entry.name) what.appendChild(el("div", "strong", entry.name));
    what.appendChild(el("div", "proc-command", entry.command));
    row.appendChild(what);
    var state = el("td");
    var badge = el("span", "badge badge-" + entry.status, entry.status);
    badge.setAttribute("data-status", entry.status);
    if (entry.status === "exited" && entry.exit_code !== null && entry.exit_code !== undefined) {
      badge.textContent = "exited " + entry.exit_code;
    }
    state.appendChild(badge);
    row.appendChild(state);
    var actions = el("td", "actions");
    var box = el("div", "row-actions");
    var logs = el("button", "btn btn-sm", "Logs");
    logs.type = "button";
    logs.setAttribute("data-action", "logs");
    box.appendChild(logs);
    if (entry.status === "running") {
      var stop = el("button", "btn btn-sm btn-danger-ghost", "Stop");
      stop.type = "button";
      stop.setAttribute("data-action", "stop");
      box.appendChild(stop);
    }
    actions.appendChild(box);
    row.appendChild(actions);
    return row;
  }

  function loadProcesses() {
    if (!processRows) return Promise.resolve();
    return call("GET", "/processes")
      .then(function (result) {
        if (!result.ok) {
          processSay(describe(result));
          return;
        }
        var entries = result.body || [];
        processRows.textContent = "";
        entries.slice().reverse().forEach(function (entry) { processRows.appendChild(processRow(entry)); });
        $("processes-empty").hidden = entries.length > 0;
        $("processes").hidden = entries.length === 0;
      })
      .catch(function () { processSay(UNREACHABLE); });
  }

  function followLogs(pid) {
    if (following) following.controller.abort();
    var controller = new AbortController();
    var mine = { pid: pid, controller: controller };
    following = mine;
    Array.prototype.forEach.call(processRows.querySelectorAll("tr"), function (row) {
      row.setAttribute("aria-selected", row.getAttribute("data-pid") === String(pid) ? "true" : "false");
    });
    var log = $("process-log");
    var state = $("process-log-state");
    function setState(value, text) {
      state.setAttribute("data-state", value);
      state.textContent = text;
    }
    $("process-logs").hidden = false;
    $("process-log-title").textContent = "Logs of " + pid;
    log.textContent = "";
    setState("connecting", "connecting");
    function line(text) {
      var follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 16;
      log.appendChild(document.createTextNode(/\n$/.test(text) ? text : text + "\n"));
      if (follow) log.scrollTop = log.scrollHeight;
    }
    stream("GET", "/processes/" + pid + "/logs" + query({ follow: "true", tail: 200 }), undefined, function (kind, data) {
      if (following !== mine) return;
      setState("live", "live");
      if (kind === "log") line(String(data.data === undefined ? "" : data.data));
      else if (kind === "end") {
        setState("done", data.status ? data.status + (data.exit_code !== null && data.exit_code !== undefined ? " " + data.exit_code : "") : "finished");
        loadProcesses();
      } else if (kind === "error") {
        line("[" + (data.detail || "the log stopped") + "]");
        setState("offline", "stopped");
      }
    }, controller.signal)
      .then(function () {
        if (following === mine && state.getAttribute("data-state") !== "done") setState("done", "finished");
      })
      .catch(function (result) {
        if (controller.signal.aborted || following !== mine) return;
        line("[" + (result && result.status ? describe(result) : UNREACHABLE) + "]");
        setState("offline", "stopped");
      });
  }

  if (processRows) {
    $("process-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var command = $("process-command").value;
      if (!command.trim()) return;
      var name = $("process-name").value.trim();
      var button = $("process-start");
      button.disabled = true;
      processSay("");
      call("POST", "/processes", { command: command, name: name || null })
        .then(function (result) {
          if (!result.ok) {
            processSay(describe(result));
            return;
          }
          $("process-command").value = "";
          $("process-name").value = "";
          return loadProcesses().then(function () { followLogs(result.body.pid); });
        })
        .catch(function () { processSay(UNREACHABLE); })
        .then(function () { button.disabled = false; });
    });

    processRows.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-action]");
      if (!button) return;
      var pid = parseInt(button.closest("tr").getAttribute("data-pid"), 10);
      if (button.getAttribute("data-action") === "logs") {
        followLogs(pid);
        return;
      }
      button.disabled = true;
      call("POST", "/processes/" + pid + "/stop")
        .then(function (result) {
          if (!result.ok) processSay(describe(result));
          return loadProcesses();
        })
        .catch(function () { processSay(UNREACHABLE); });
    });

    $("process-refresh").addEventListener("click", loadProcesses);
    loadProcesses();
  }

  /* --- tasks -------------------------------------------------------------------------------- */

  var taskForm = $("task-form");
  var transcript = $("task-transcript");
  var streamState = $("stream-state");
  var task = null; // {id, status, source: "session" | "run", socket, pending: [...]}
  var sessionLive = false; // the session socket is open and has been since the task began
  var submitting = false; // a task was asked for and its id is not known yet
  var early = []; // session task messages that came meanwhile

  var FINAL_STATUS = {
    task_completed: "completed",
    run_completed: "completed",
    run_failed: "failed",
    run_cancelled: "cancelled",
    run_timed_out: "timed_out",
  };

  function setStreamState(state, label) {
    if (!streamState) return;
    streamState.setAttribute("data-state", state);
    streamState.textContent = label || { live: "live", connecting: "connecting", offline: "reconnecting" }[state] || state;
  }

  function taskItem(node) {
    $("task-empty").hidden = true;
    var follow = transcript.scrollTop + transcript.clientHeight >= transcript.scrollHeight - 24;
    transcript.appendChild(node);
    if (follow) transcript.scrollTop = transcript.scrollHeight;
    return node;
  }

  function lastItem() {
    var items = transcript.querySelectorAll(".t-item");
    return items.length ? items[items.length - 1] : null;
  }

  function text(value) {
    var previous = lastItem();
    if (previous && previous.classList.contains("t-text")) {
      previous.appendChild(document.createTextNode(value));
      var follow = transcript.scrollTop + transcript.clientHeight >= transcript.scrollHeight - 24;
      if (follow) transcript.scrollTop = transcript.scrollHeight;
    } else {
      taskItem(el("div", "t-item t-text", value));
    }
  }

  function toolItem(kind, label, data, value) {
    var item = el("div", "t-item t-tool " + kind);
    var head = el("div", "t-head");
    head.appendChild(el("span", "t-kind", label));
    head.appendChild(el("code", "", data.name || data.tool || ""));
    head.appendChild(el("span", "t-id", data.call_id || ""));
    item.appendChild(head);
    item.appendChild(el("pre", "", pretty(value)));
    taskItem(item);
  }

  function statusLine(label, final) {
    var item = el("div", "t-item t-status" + (final ? " t-final t-" + final : ""));
    item.appendChild(el("span", "", label));
    taskItem(item);
  }

  function setTaskStatus(next) {
    if (!task || !next) return;
    task.status = next;
    window.AIMOS.setBadge($("task-status"), next);
  }

  function finishTask(final, data) {
    if (!task || task.done) return;
    task.done = true;
    setTaskStatus(final);
    var labels = { completed: "Completed", failed: "Failed", cancelled: "Cancelled", timed_out: "Timed out" };
    var detail = final === "completed" ? "" : (data.error || data.reason || data.message || data.detail || "");
    statusLine((labels[final] || final) + (detail ? ": " + detail : ""), "run_" + final);
    if (final === "completed" && "output" in data) {
      $("task-output").textContent = pretty(data.output);
      $("task-output-box").hidden = false;
    }
    if (task.socket) task.socket.stop();
    if (taskForm) $("task-run").disabled = false;
    // The task may have written files.
    if (tree) load(tree);
  }

  /* One event of the task, named as the session socket names it ({type, data}). */
  function taskEvent(type, data) {
    if (!task || task.done) return;
    data = data && typeof data === "object" ? data : { value: data };
    switch (type) {
      case "task_started":
        setTaskStatus("running");
        statusLine("Task started" + (data.version ? " (" + data.version + ")" : ""));
        break;
      case "text_delta":
        text(String(firstOf(data, ["content", "delta", "text"], "")));
        break;
      case "tool_call":
        toolItem("t-call", "Tool call", data, "args" in data ? data.args : data.arguments);
        break;
      case "tool_complete":
        toolItem("t-result", "Tool result", data, "result" in data ? data.result : data.output);
        break;
      case "log": {
        var level = String(data.level || "info");
        var line = el("div", "t-item t-log t-log-" + level.toLowerCase());
        line.appendChild(el("span", "t-level", level));
        line.appendChild(el("span", "t-source", data.source || ""));
        line.appendChild(el("span", "t-msg", data.message === undefined ? "" : String(data.message)));
        taskItem(line);
        break;
      }
      case "task_completed":
        finishTask(data.status && data.status !== "completed" ? data.status : "completed", data);
        break;
      case "error": {
        // Fatal: the task failed, was cancelled or timed out (`task_completed` follows); else
        // a problem it went on after.
        if (data.fatal) {
          finishTask(data.status || "failed", data);
        } else {
          var problem = el("div", "t-item t-error");
          problem.appendChild(el("span", "t-kind", "Error"));
          problem.appendChild(document.createTextNode(" " + (data.message || data.error || data.detail || "")));
          taskItem(problem);
        }
        break;
      }
      default:
        break;
    }
  }

  function firstOf(data, keys, fallback) {
    for (var i = 0; i < keys.length; i++) if (data[keys[i]] !== undefined && data[keys[i]] !== null) return data[keys[i]];
    return fallback;
  }

  /* The run's own events (the run socket), as the session socket would name them. */
  var FROM_RUN = {
    run_started: "task_started",
    content_delta: "text_delta",
    tool_call: "tool_call",
    tool_result: "tool_complete",
    log: "log",
  };

  function runEvent(event) {
    if (!task || task.source !== "run") return;
    if (typeof event.seq === "number") {
      if (event.seq <= task.seq) return;
      task.seq = event.seq;
    }
    var data = event.data && typeof event.data === "object" ? event.data : { value: event.data };
    if (FINAL_STATUS[event.type]) {
      finishTask(FINAL_STATUS[event.type], data);
    } else if (event.type === "error") {
      taskEvent("error", { message: data.message, fatal: false });
    } else if (FROM_RUN[event.type]) {
      taskEvent(FROM_RUN[event.type], data);
    } else if (event.type === "run_paused" || event.type === "run_resumed") {
      setTaskStatus(event.type === "run_paused" ? "paused" : "running");
      statusLine(event.type === "run_paused" ? "Paused" : "Resumed");
    }
  }

  /* Follow the task over the run's socket from its first event (what was drawn is drawn
   * again from the log). */
  function followRun() {
    if (!task || task.done) return;
    if (task.socket) task.socket.stop();
    task.source = "run";
    task.seq = 0;
    transcript.querySelectorAll(".t-item").forEach(function (item) { item.remove(); });
    $("task-empty").hidden = false;
    task.socket = window.AIMOS.socket(
      function () { return "/ws/executions/" + task.id + "/?after=" + task.seq; },
      { message: runEvent }
    );
  }

  /* Which task a session message is about (its run's id), when it says. */
  function taskIdOf(data) {
    if (!data || typeof data !== "object") return null;
    return data.execution_id || data.task_id || data.id || null;
  }

  function startTask(execution) {
    task = { id: execution.id, status: execution.status || "pending", source: "session", seq: 0, done: false };
    $("task").hidden = false;
    var link = $("task-link");
    link.href = "/executions/" + execution.id + "/";
    link.textContent = "Run " + String(execution.id).slice(0, 8);
    window.AIMOS.setBadge($("task-status"), task.status);
    transcript.querySelectorAll(".t-item").forEach(function (item) { item.remove(); });
    $("task-empty").hidden = false;
    $("task-output-box").hidden = true;
    if (!sessionLive) {
      followRun();
    } else {
      var waiting = early;
      early = [];
      waiting.forEach(function (message) { sessionMessage(message); });
    }
  }

  if (taskForm) {
    taskForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var input;
      var raw = $("task-input").value;
      try { input = raw.trim() ? JSON.parse(raw) : {}; } catch (e) { return; } // aimos.js said why
      var body = { input: input };
      var agent = $("task-agent");
      if (agent) body.agent = agent.value;
      var button = $("task-run");
      button.disabled = true;
      say("");
      early = [];
      task = null;
      submitting = true;
      call("POST", "/tasks", body)
        .then(function (result) {
          submitting = false;
          if (!result.ok) {
            say(describe(result), true);
            button.disabled = false;
            return;
          }
          startTask(result.body.execution || result.body);
        })
        .catch(function () {
          submitting = false;
          say(UNREACHABLE, true);
          button.disabled = false;
        });
    });
  }

  /* --- the session's socket ------------------------------------------------------------------ */

  var TASK_TYPES = ["task_started", "text_delta", "tool_call", "tool_complete", "task_completed", "error", "log"];

  function sessionMessage(message) {
    var type = message.type;
    var data = message.data;
    if (TASK_TYPES.indexOf(type) !== -1) {
      var id = taskIdOf(data);
      if (!task) {
        if (submitting) early.push(message); // may be the task's, whose id is not known yet
        return;
      }
      if (task.source !== "session") return;
      // Every task message names its run; an error that names none is not the task's.
      if (id ? String(id) !== String(task.id) : type === "error") return;
      taskEvent(type, data);
      return;
    }
    data = data || {};
    if (type === "session_status") {
      statusChanged(data.status);
    } else if (type === "file_changed") {
      if (tree && data.path !== undefined) refreshSoon(parentOf(String(data.path)));
    } else if (type === "process_exited") {
      loadProcesses();
    } else if (type === "process_output") {
      // The followed process's log comes from its own stream; nothing to add here.
    }
  }

  if (LIVE.indexOf(status) !== -1 && "WebSocket" in window) {
    window.AIMOS.socket(
      function () { return root.getAttribute("data-ws"); },
      {
        message: sessionMessage,
        state: function (state) {
          var wasLive = sessionLive;
          sessionLive = state === "live";
          setStreamState(state);
          // Messages were lost while the socket was down: a task in progress is read again
          // from its run's log.
          if (wasLive && !sessionLive && task && !task.done && task.source === "session") followRun();
        },
        closed: function (code) {
          sessionLive = false;
          // 1000: the session is gone; 4xxx: the server refused the socket (or has none).
          setStreamState("done", code === 1000 ? "closed" : "unavailable");
          if (task && !task.done && task.source === "session") followRun();
        },
      }
    );
  }
})();
