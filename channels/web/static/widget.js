/* AutoDoctor chat widget: embed with
 *   <script src="https://HOST/widget.js" defer></script>
 * Optional attributes: data-open="true" (open at load, except on a phone-sized screen, where
 * the panel would cover the page), data-container="ID" (render inline into that element, no
 * launcher), data-mechanic-invite="CODE". A link to "#chat" opens the widget on any screen.
 * window.AutoDoctorWidget: open(), close(), send(text), act(payload, label), visitor() and
 * on("welcome"|"message", fn). Self-contained: no build step, no dependencies. All text is
 * rendered with textContent. */
(function () {
  "use strict";
  if (window.AutoDoctorWidget) return; // included twice: keep the first

  var script = document.currentScript;
  var base = new URL(script && script.src ? script.src : "/widget.js", location.href);
  var ORIGIN = base.origin;
  var WS_URL = ORIGIN.replace(/^http/, "ws") + "/ws/widget";
  var UPLOAD_URL = ORIGIN + "/widget/upload";
  var attr = function (name) { return script ? script.getAttribute(name) : null; };
  var INVITE = attr("data-mechanic-invite") || null;
  var CONTAINER = attr("data-container");
  var PHONE = window.matchMedia && window.matchMedia("(max-width: 480px)").matches;
  var OPEN_AT_LOAD = (attr("data-open") === "true" && !PHONE) || location.hash === "#chat";
  var TOKEN_KEY = INVITE ? "autodoctor.visitor.mechanic." + INVITE : "autodoctor.visitor";
  var HISTORY_LIMIT = 200;
  var MAX_BACKOFF_MS = 15000;

  // ---------------------------------------------------------------- storage
  var store = {
    get: function (key) {
      try { return window.localStorage.getItem(key); } catch (e) { return null; }
    },
    set: function (key, value) {
      try { window.localStorage.setItem(key, value); } catch (e) { /* private mode: memory only */ }
    }
  };

  function seenIds(h) {
    var ids = {};
    h.items.forEach(function (item) { if (item.id != null) ids[item.id] = true; });
    return ids;
  }

  function loadHistory(token) {
    try {
      var saved = JSON.parse(store.get("autodoctor.history." + token) || "null");
      if (saved && Array.isArray(saved.items)) {
        // Saved before bot messages kept their ids: only "newer than the last" can tell.
        saved.legacy = saved.items.some(function (i) { return i.kind === "bot" && i.id == null; });
        return saved;
      }
    } catch (e) { /* corrupt: start afresh */ }
    return { last: null, items: [] };
  }

  // ---------------------------------------------------------------- state
  var token = store.get(TOKEN_KEY);
  var history = token ? loadHistory(token) : { last: null, items: [] };
  var lastId = history.last; // highest message id seen for this visitor
  var seen = seenIds(history);  // every bot message id shown (a late one may be lower)
  // The visitor's items whose frame the server has not acknowledged yet (it acknowledges
  // after storing; a repeated client_id is handled once): {item, el, sentOn}. They stay in
  // the saved history with their frame, so a reload or a reconnect sends them again.
  var queue = [];
  var ws = null, ready = false, started = false, backoff = 1000, retryTimer = null;
  var restarted = false; // reconnected at once after a 1012/1001, not yet welcomed
  var generation = 0;        // one per socket that said hello
  var isOpen = false, wantOpen = OPEN_AT_LOAD, unread = 0;
  var ui = null;
  var listeners = {};          // window.AutoDoctorWidget.on(event, fn)

  function emit(event, data) {
    (listeners[event] || []).forEach(function (fn) {
      try { fn(data); } catch (e) { setTimeout(function () { throw e; }); }
    });
  }

  function saveHistory() {
    if (!token) return;
    history.last = lastId;
    if (history.items.length > HISTORY_LIMIT) history.items.splice(0, history.items.length - HISTORY_LIMIT);
    store.set("autodoctor.history." + token, JSON.stringify(history));
  }

  // ---------------------------------------------------------------- styles
  var CSS = [
    "#autodoctor-launcher,#autodoctor-widget{--ad-accent:#0b63ce;--ad-accent-dark:#084c9e;",
    "font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1b2330;",
    "box-sizing:border-box;z-index:2147483000;position:fixed;right:20px;bottom:20px}",
    "#autodoctor-widget *,#autodoctor-launcher *{box-sizing:border-box;font:inherit}",
    "#autodoctor-launcher{border:0;border-radius:999px;padding:12px 20px;min-height:48px;cursor:pointer;",
    "background:var(--ad-accent);color:#fff;font-weight:600;box-shadow:0 8px 24px rgba(11,99,206,.35)}",
    "#autodoctor-launcher:hover{background:var(--ad-accent-dark)}",
    "#autodoctor-launcher,#autodoctor-widget .ad-attach{display:inline-flex;align-items:center;",
    "justify-content:center;gap:8px}",
    "#autodoctor-launcher .ad-icon,#autodoctor-widget .ad-icon{width:18px;height:18px;fill:none;",
    "stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round}",
    "#autodoctor-launcher[hidden],#autodoctor-widget[hidden]{display:none}",
    "#autodoctor-launcher .ad-badge{display:inline-block;min-width:20px;margin-left:8px;padding:0 6px;",
    "border-radius:10px;background:#e5484d;font-size:12px;line-height:20px;text-align:center}",
    "#autodoctor-widget{width:370px;max-width:calc(100vw - 24px);height:560px;",
    "max-height:calc(100vh - 40px);max-height:calc(100dvh - 40px);display:flex;flex-direction:column;background:#fff;",
    "border-radius:16px;overflow:hidden;box-shadow:0 16px 48px rgba(16,24,40,.22);",
    "border:1px solid #e3e8ef}",
    "#autodoctor-widget .ad-head{display:flex;align-items:center;gap:10px;padding:14px 16px;",
    "background:linear-gradient(135deg,var(--ad-accent-dark),var(--ad-accent));color:#fff}",
    "#autodoctor-widget .ad-title{flex:1;font-weight:650;font-size:15px;margin:0}",
    "#autodoctor-widget .ad-sub{display:block;font-weight:400;font-size:13px}",
    "#autodoctor-widget .ad-close{border:0;background:transparent;color:#fff;font-size:22px;",
    "line-height:1;cursor:pointer;width:44px;height:44px;flex:none;border-radius:8px}",
    "#autodoctor-widget .ad-close:hover{background:rgba(255,255,255,.18)}",
    "#autodoctor-widget #ad-status{padding:4px 16px;font-size:13px;background:#fff7e0;color:#6b4e00}",
    "#autodoctor-widget #ad-status:empty{display:none}",
    "#autodoctor-widget .ad-log{flex:1;overflow-y:auto;padding:14px;background:#f5f7fb;",
    "display:flex;flex-direction:column;gap:8px}",
    "#autodoctor-widget .ad-msg{max-width:85%;padding:9px 12px;border-radius:14px;",
    "white-space:pre-wrap;overflow-wrap:anywhere}",
    "#autodoctor-widget .ad-bot{align-self:flex-start;background:#fff;border:1px solid #e3e8ef;",
    "border-bottom-left-radius:4px}",
    "#autodoctor-widget .ad-me{align-self:flex-end;background:var(--ad-accent);color:#fff;",
    "border-bottom-right-radius:4px}",
    "#autodoctor-widget .ad-me.ad-pending{opacity:.6}",
    "#autodoctor-widget .ad-notice{align-self:center;max-width:95%;background:transparent;",
    "color:#5b6575;font-size:13px;padding:2px 8px;text-align:center}",
    "#autodoctor-widget .ad-actions{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}",
    "#autodoctor-widget .ad-btn,#autodoctor-widget .ad-link{display:inline-flex;align-items:center;",
    "min-height:44px;padding:8px 14px;",
    "border-radius:999px;border:1px solid var(--ad-accent);background:#fff;color:var(--ad-accent);",
    "cursor:pointer;text-decoration:none;font-weight:550;font-size:15px;white-space:normal;text-align:left}",
    "#autodoctor-widget .ad-btn:hover:not(:disabled){background:#eaf2fd}",
    "#autodoctor-widget .ad-btn:disabled{opacity:.5;cursor:default}",
    "#autodoctor-widget .ad-link{background:var(--ad-accent);color:#fff}",
    "#autodoctor-widget .ad-link:hover{background:var(--ad-accent-dark)}",
    "#autodoctor-widget .ad-form{display:flex;align-items:flex-end;gap:6px;padding:10px;",
    "border-top:1px solid #e3e8ef;background:#fff}",
    "#autodoctor-widget #ad-input{flex:1;resize:none;border:1px solid #cfd6e0;border-radius:10px;",
    "padding:10px;max-height:120px;min-height:44px;outline:none;color:#1b2330;background:#fff;",
    "font-size:16px}",
    "#autodoctor-widget #ad-input:focus{border-color:var(--ad-accent);box-shadow:0 0 0 3px rgba(11,99,206,.15)}",
    "#autodoctor-widget .ad-attach,#autodoctor-widget #ad-send{border:0;border-radius:10px;",
    "height:44px;cursor:pointer}",
    "#autodoctor-widget .ad-attach{width:44px;flex:none;background:#eef1f6;color:#3d4756}",
    "#autodoctor-widget .ad-attach:hover:not(:disabled){background:#e1e6ee}",
    "#autodoctor-widget .ad-attach:disabled{opacity:.5;cursor:progress}",
    "#autodoctor-widget #ad-send{flex:none;padding:0 16px;background:var(--ad-accent);color:#fff;font-weight:600}",
    "#autodoctor-widget #ad-send:hover{background:var(--ad-accent-dark)}",
    "#autodoctor-widget #ad-file{display:none}",
    "#autodoctor-widget.ad-inline{position:relative;right:auto;bottom:auto;z-index:auto;width:100%;",
    "max-width:none;height:100%;max-height:none;border-radius:12px;box-shadow:none}",
    "@media (max-width:480px){#autodoctor-widget:not(.ad-inline){right:0;bottom:0;width:100vw;",
    "max-width:100vw;height:100vh;max-height:100vh;height:100dvh;max-height:100dvh;border-radius:0}}"
  ].join("\n");

  // ---------------------------------------------------------------- DOM
  function el(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (key) {
      if (key === "text") node.textContent = props[key];
      else if (key === "class") node.className = props[key];
      else node.setAttribute(key, props[key]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  // A line icon (no icon font or emoji font needed): one stroked SVG path.
  function icon(path) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", "ad-icon");
    var p = document.createElementNS(ns, "path");
    p.setAttribute("d", path);
    svg.appendChild(p);
    return svg;
  }
  var ICON_CHAT = "M21 11.5a8.4 8.4 0 0 1-.9 3.8 8.5 8.5 0 0 1-7.6 4.7 8.4 8.4 0 0 1-3.8-.9L3 21" +
    "l1.9-5.7a8.4 8.4 0 0 1-.9-3.8 8.5 8.5 0 0 1 4.7-7.6 8.4 8.4 0 0 1 3.8-.9h.5a8.5 8.5 0 0 1 8 8z";
  var ICON_CLIP = "M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2" +
    "a2 2 0 0 1-2.8-2.8l8.5-8.5";

  function mount() {
    if (ui) return;
    var style = el("style", { id: "autodoctor-widget-style" });
    style.textContent = CSS;
    document.head.appendChild(style);

    var host = CONTAINER ? document.getElementById(CONTAINER) : null;
    var launcher = null, badge = null;
    if (!host) {
      launcher = el("button", { id: "autodoctor-launcher", type: "button" });
      launcher.appendChild(icon(ICON_CHAT));
      launcher.appendChild(document.createTextNode(INVITE ? "Requests and chat" : "Chat with a mechanic"));
      badge = el("span", { class: "ad-badge", hidden: "" });
      launcher.appendChild(badge);
    }

    var title = el("h2", { class: "ad-title", text: INVITE ? "Mechanic console" : "AutoDoctor" });
    title.appendChild(el("span", { class: "ad-sub",
      text: INVITE ? "AutoDoctor requests and chats" : "Talk to a certified mechanic" }));
    var closeBtn = el("button", { class: "ad-close", type: "button", "aria-label": "Close chat",
      text: "×" });
    var log = el("div", { class: "ad-log", role: "log", "aria-live": "polite" });
    var input = el("textarea", { id: "ad-input", rows: "1", maxlength: "4000",
      placeholder: "Type a message…", "aria-label": "Message" });
    var attach = el("button", { class: "ad-attach", type: "button", title: "Attach a photo, PDF or video",
      "aria-label": "Attach a file" }, [icon(ICON_CLIP)]);
    var file = el("input", { id: "ad-file", type: "file",
      accept: "image/*,application/pdf,video/*", tabindex: "-1" });
    var send = el("button", { id: "ad-send", type: "submit", text: "Send" });
    var form = el("form", { class: "ad-form" }, [attach, file, input, send]);
    var status = el("div", { id: "ad-status", role: "status" });
    var panel = host
      ? el("div", { id: "autodoctor-widget", class: "ad-inline" },
        [status, log, form])
      : el("section", { id: "autodoctor-widget", role: "dialog", hidden: "",
        "aria-label": "AutoDoctor chat" }, [el("header", { class: "ad-head" }, [title, closeBtn]),
        status, log, form]);
    if (host) {
      host.appendChild(panel);
    } else {
      document.body.appendChild(launcher);
      document.body.appendChild(panel);
      launcher.addEventListener("click", open);
    }
    ui = { launcher: launcher, badge: badge, panel: panel, log: log, input: input,
      attach: attach, file: file, status: status };

    closeBtn.addEventListener("click", close);
    // Links to "#chat" open the widget (the paid page links back to /#chat).
    window.addEventListener("hashchange", function () { if (location.hash === "#chat") open(); });
    document.addEventListener("click", function (event) {
      var link = event.target && event.target.closest ? event.target.closest('a[href="#chat"]') : null;
      if (link) { event.preventDefault(); open(); }
    });
    form.addEventListener("submit", function (event) { event.preventDefault(); sendTyped(); });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        sendTyped();
      }
    });
    attach.addEventListener("click", function () { file.click(); });
    file.addEventListener("change", function () {
      if (file.files && file.files[0]) upload(file.files[0]);
      file.value = "";
    });

    panel.addEventListener("keydown", function (event) { if (event.key === "Escape") close(); });

    history.items.forEach(function (item) {
      var bubble = render(item, false);
      if (item.frame) { // not acknowledged before a reload: sent again (handled once)
        if (!item.frame.client_id) item.frame.client_id = newClientId();
        bubble.classList.add("ad-pending");
        queue.push({ item: item, el: bubble, sentOn: null });
      }
    });
    if (wantOpen || host) open(!host);
    else if (token) connect(); // a returning visitor: hear replies while closed
  }

  function scrollDown() { ui.log.scrollTop = ui.log.scrollHeight; }

  function notice(text) {
    var node = ui.log.appendChild(el("div", { class: "ad-msg ad-notice", text: text }));
    scrollDown();
    return node;
  }

  function safeUrl(url) {
    try {
      var parsed = new URL(url, ORIGIN);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (e) { return null; }
  }

  // item: {kind: "bot"|"me", text, buttons?, link?, files?}
  function render(item, live) {
    var bubble = el("div", { class: "ad-msg " + (item.kind === "me" ? "ad-me" : "ad-bot"),
      text: item.text || "" });
    var actions = el("div", { class: "ad-actions" });
    (item.buttons || []).forEach(function (b) {
      var button = el("button", { class: "ad-btn", type: "button", text: String(b.label) });
      button.addEventListener("click", function () {
        actions.querySelectorAll(".ad-btn").forEach(function (x) { x.disabled = true; });
        say({ type: "action", payload: String(b.payload) }, String(b.label));
        ui.input.focus({ preventScroll: true }); // the button is disabled: not left on <body>
      });
      actions.appendChild(button);
    });
    if (item.link && item.link.url) {
      var href = safeUrl(String(item.link.url));
      var label = String(item.link.label || item.link.url);
      if (href) {
        actions.appendChild(el("a", { class: "ad-link", href: href, target: "_blank",
          rel: "noopener", text: label }));
      } else {
        actions.appendChild(el("span", { class: "ad-link-text", text: label + ": " + item.link.url }));
      }
    }
    (item.files || []).forEach(function (f) {
      var fileHref = safeUrl(String(f.url || ""));
      if (fileHref) {
        actions.appendChild(el("a", { class: "ad-link ad-attachment", href: fileHref, target: "_blank",
          rel: "noopener", text: "\uD83D\uDCCE " + String(f.name || "file") }));
      }
    });
    if (actions.childNodes.length) bubble.appendChild(actions);
    ui.log.appendChild(bubble);
    scrollDown();
    if (live && item.kind === "bot" && !isOpen && ui.badge) {
      unread += 1;
      ui.badge.textContent = String(unread);
      ui.badge.hidden = false;
    }
    return bubble;
  }

  function setStatus(text) { if (ui) ui.status.textContent = text; }

  // ---------------------------------------------------------------- connection
  function connect() {
    if (started) return;
    started = true;
    openSocket();
    window.addEventListener("online", function () { if (!ws) reconnectNow(); });
  }

  function openSocket() {
    retryTimer = null;
    if (!ui.status.textContent) setStatus("Connecting…");
    var socket = ws = new WebSocket(WS_URL);
    socket.onopen = function () {
      socket.send(JSON.stringify({ type: "hello", visitor: token || null,
        resume_after: token ? lastId : null, mechanic_invite: INVITE }));
    };
    socket.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame && typeof frame === "object") receive(frame);
    };
    socket.onclose = function (event) {
      if (ws !== socket) return;
      ws = null;
      ready = false;
      setStatus("Reconnecting…");
      // 1012 (service restart) and 1001 (going away): the server is draining; reconnect at
      // once (behind a proxy, to another process). Once until a welcome, then back off.
      if ((event.code === 1012 || event.code === 1001) && !restarted) {
        restarted = true;
        openSocket();
        return;
      }
      retryTimer = setTimeout(openSocket, backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    };
  }

  function reconnectNow() {
    if (retryTimer) { clearTimeout(retryTimer); openSocket(); }
  }

  function receive(frame) {
    if (frame.type === "welcome") {
      adopt(frame.visitor);
      ready = true;
      generation += 1;
      backoff = 1000;
      restarted = false;
      setStatus("");
      flush();
      emit("welcome", { visitor: token });
    } else if (frame.type === "message") {
      var id = typeof frame.id === "number" ? frame.id : Number(frame.id);
      var known = frame.id != null && isFinite(id);
      // Ids say which messages were shown, not their order: one committed a moment late
      // can have a lower id than one already shown, and is shown when it comes.
      if (known && (seen[id] || (lastId !== null && id <= lastId && history.legacy))) return;
      var item = { kind: "bot", id: known ? id : null, text: String(frame.text || ""),
        buttons: Array.isArray(frame.buttons) ? frame.buttons : [], link: frame.link || null,
        files: Array.isArray(frame.files) ? frame.files : [] };
      if (known) { seen[id] = true; if (lastId === null || id > lastId) lastId = id; }
      history.items.push(item);
      saveHistory();
      render(item, true);
      emit("message", item);
    } else if (frame.type === "ack") {
      for (var i = 0; i < queue.length; i++) {
        if (queue[i].item.frame && queue[i].item.frame.client_id === frame.client_id) {
          delete queue[i].item.frame;
          queue[i].el.classList.remove("ad-pending");
          queue.splice(i, 1);
          saveHistory();
          break;
        }
      }
    } else if (frame.type === "error") {
      notice(String(frame.message || frame.code || "Something went wrong."));
      if (!ready && (frame.code === "bad_visitor" || frame.code === "bad_resume_after")) {
        if (frame.code === "bad_visitor") token = null; // stale storage: start afresh
        lastId = null;
        seen = {};
        if (ws) ws.close();
      } else if (!ready) {
        setStatus(""); // connected, but the server refused the hello (e.g. a bad invite)
      }
    }
  }

  function adopt(visitor) {
    if (!visitor || visitor === token) return;
    var had = token;
    token = String(visitor);
    store.set(TOKEN_KEY, token);
    if (had) {
      // The server gave us a new identity: the old transcript is not this visitor's.
      history = loadHistory(token);
      lastId = history.last;
      seen = seenIds(history);
      ui.log.textContent = "";
      history.items.forEach(function (item) { render(item, false); });
      queue.forEach(function (q) { history.items.push(q.item); ui.log.appendChild(q.el); });
    }
    saveHistory(); // also keeps what was typed before the first welcome
  }

  function flush() {
    if (!ready || !ws || ws.readyState !== WebSocket.OPEN) return;
    queue.forEach(function (q) {
      if (q.sentOn === generation || !q.item.frame) return;
      q.sentOn = generation;
      ws.send(JSON.stringify(q.item.frame));
    });
  }

  function newClientId() {
    var bytes = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }

  // Show the visitor's own bubble now; send the frame now or after reconnecting.
  function say(frame, shownText) {
    frame.client_id = newClientId();
    var item = { kind: "me", text: shownText, frame: frame };
    history.items.push(item);
    saveHistory();
    var bubble = render(item, false);
    bubble.classList.add("ad-pending"); // until the server acknowledges it
    queue.push({ item: item, el: bubble, sentOn: null });
    connect();
    flush();
  }

  function sendTyped() {
    var text = ui.input.value.trim();
    if (!text) return;
    ui.input.value = "";
    say({ type: "message", text: text }, text);
    ui.input.focus();
  }

  // ---------------------------------------------------------------- uploads
  function upload(file) {
    if (!token) { notice("Still connecting, please try again in a moment."); return; }
    ui.attach.disabled = true;
    var progress = notice("Uploading " + file.name + "…");
    var body = new FormData();
    body.append("file", file, file.name);
    fetch(UPLOAD_URL, { method: "POST", body: body, headers: { "X-Visitor-Token": token } })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (data) {
          if (response.ok && data && data.file != null) {
            say({ type: "message", text: "", attachments: [data.file] }, "📎 " + file.name);
          } else {
            var err = data && data.error;
            notice(err && err.message ? String(err.message)
              : "The upload failed (" + response.status + "). Please try again.");
          }
        });
      })
      .catch(function () { notice("The upload failed: no connection. Please try again."); })
      .then(function () { progress.remove(); ui.attach.disabled = false; });
  }

  // ---------------------------------------------------------------- public API
  function open(focus) {
    wantOpen = true;
    if (!ui) return;
    isOpen = true;
    ui.panel.hidden = false;
    if (ui.launcher) {
      ui.launcher.hidden = true;
      unread = 0;
      ui.badge.hidden = true;
    }
    connect();
    scrollDown();
    if (focus !== false) ui.input.focus({ preventScroll: true });
  }

  function close() {
    if (!ui || !ui.launcher) return; // inline: always shown
    wantOpen = isOpen = false;
    ui.panel.hidden = true;
    ui.launcher.hidden = false;
    ui.launcher.focus(); // back where the visitor opened it, not <body>
  }

  window.AutoDoctorWidget = {
    open: open, close: close,
    // What the visitor types or taps, sent as if from the widget (shown, queued, acknowledged).
    send: function (text) {
      text = String(text || "").trim();
      if (!ui || !text) return false;
      say({ type: "message", text: text }, text);
      return true;
    },
    act: function (payload, label) {
      if (!ui || !payload) return false;
      say({ type: "action", payload: String(payload) }, String(label || payload));
      return true;
    },
    visitor: function () { return ready ? token : null; },
    on: function (event, fn) {
      (listeners[event] = listeners[event] || []).push(fn);
      if (event === "welcome" && ready && token) fn({ visitor: token });
    }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount);
  else mount();
})();
