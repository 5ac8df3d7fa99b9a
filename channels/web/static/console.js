/* The mechanic workspace at /m/{invite}: offers, the current job, availability, history and
 * earnings, beside the conversation (widget.js rendered inline, data-container). Reads
 * GET /console/state with the widget's visitor token; every change goes through the chat
 * (Accept is the offer's own "accept:REF" action, checked by the server). New offers ring,
 * show a desktop notification (once the mechanic allows it) and a count in the title.
 * All text is rendered with textContent. */
(function () {
  "use strict";
  var W = window.AutoDoctorWidget;
  if (!W || !W.on) return;

  var STATE_URL = new URL("/console/state", document.currentScript.src).href;
  var REFRESH_MS = 30000;
  var baseTitle = document.title;
  var token = null, loading = false, again = false, soon = null;
  var known = null;          // refs of the offers shown so far (null before the first load)
  var audio = null;          // made on the mechanic's click: browsers allow sound after one

  function $(id) { return document.getElementById(id); }

  function el(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (key) {
      if (key === "text") node.textContent = props[key];
      else if (key === "class") node.className = props[key];
      else node.setAttribute(key, props[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function fill(node, children) {
    node.textContent = "";
    children.forEach(function (child) { node.appendChild(child); });
  }

  function money(cents, currency) {
    try {
      return new Intl.NumberFormat("en-US", { style: "currency", currency: currency })
        .format(cents / 100);
    } catch (e) { return (cents / 100).toFixed(2) + " " + currency; }
  }

  function details(rows) {
    var dl = el("dl");
    rows.forEach(function (row) {
      if (row[1] === null || row[1] === undefined || row[1] === "") return;
      dl.appendChild(el("dt", { text: row[0] }));
      dl.appendChild(el("dd", { text: String(row[1]) }));
    });
    return dl;
  }

  function mileage(item) {
    return item.odometer == null ? null
      : item.odometer.toLocaleString("en-US") + " " + item.odometer_unit;
  }

  // ---------------------------------------------------------------- rendering
  function renderOffers(state) {
    var list = $("console-offers");
    fill(list, state.offers.map(function (offer) {
      var accept = el("button", { class: "act", type: "button", text: "Accept " + offer.ref });
      accept.addEventListener("click", function () {
        accept.disabled = true;
        accept.textContent = "Accepting " + offer.ref + "…";
        W.act("accept:" + offer.ref, "Accept " + offer.ref);
      });
      return el("li", { class: "offer" }, [
        el("h3", { text: offer.ref + " · " + offer.plan + " (" + offer.minutes + " min)" }),
        details([["You earn", money(offer.payout_cents, state.currency)],
          ["Vehicle", offer.vehicle], ["Mileage", mileage(offer)], ["Problem", offer.problem],
          ["Photos/files", offer.files]]),
        accept
      ]);
    }));
    $("console-no-offers").hidden = state.offers.length > 0;
    document.title = state.offers.length ? "(" + state.offers.length + ") " + baseTitle : baseTitle;
  }

  var STATUS = { accepted: "accepted, waiting for the customer", waiting: "waiting for the customer to write",
    live: "under way", completed: "completed", cancelled: "cancelled" };

  function renderJob(state) {
    var job = state.job;
    if (!job) { fill($("console-job"), [el("p", { class: "muted", text: "No job right now." })]); return; }
    var photos = el("ul", { class: "photos" }, job.photos.map(function (photo) {
      var link = el("a", { href: photo.url, target: "_blank", rel: "noopener" });
      if (/^image\//.test(photo.content_type)) link.appendChild(el("img", { src: photo.url, alt: "" }));
      link.appendChild(el("span", { text: photo.name }));
      return el("li", {}, [link]);
    }));
    var ends = job.ends_at ? new Date(job.ends_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : null;
    fill($("console-job"), [
      el("h3", { text: job.ref + " · " + job.plan + " with " + job.customer }),
      details([["Status", STATUS[job.status] || job.status], ["Ends at", ends],
        ["You earn", money(job.payout_cents, state.currency)], ["Vehicle", job.vehicle],
        ["Mileage", mileage(job)], ["Problem", job.problem]]),
      job.photos.length ? el("h3", { text: "Photos and files" }) : null,
      job.photos.length ? photos : el("p", { class: "muted", text: "No photos or files." }),
      el("p", { class: "muted", text: "Write to " + job.customer + " in the conversation." })
    ].filter(Boolean));
  }

  function renderAvailability(state) {
    var me = state.mechanic, toggle = $("console-toggle");
    $("console-who").textContent = me.name + " · AutoDoctor · keep this page open to receive requests";
    // During a job everything typed goes to the customer: no commands until it ends.
    var busy = !!state.job;
    $("console-availability").textContent = (me.available
      ? "You're available: new requests are offered to you."
      : "You're away: no new requests are offered to you.") +
      (busy ? " You can change this after this job; requests wait until then." : "");
    toggle.hidden = false;
    toggle.disabled = busy;
    toggle.textContent = me.available ? "Go away" : "Become available";
    toggle.onclick = function () { toggle.disabled = true; W.send(me.available ? "away" : "available"); };
    fill($("console-hours"), (me.hours.length ? me.hours : ["Any time (no hours set)"])
      .map(function (h) { return el("li", { text: h }); })
      .concat([el("li", { text: "Timezone: " + me.timezone })]));
  }

  function renderHistory(state) {
    var e = state.earnings;
    fill($("console-earnings"), [
      el("p", {}, [el("strong", { text: String(e.sessions) }), el("span", { text: "completed sessions" })]),
      el("p", {}, [el("strong", { text: money(e.paid_cents, state.currency) }), el("span", { text: "paid out" })]),
      el("p", {}, [el("strong", { text: money(e.pending_cents, state.currency) }), el("span", { text: "pending" })]),
      el("p", {}, [el("strong", { text: e.rating ? e.rating + "/5" : "–" }),
        el("span", { text: e.ratings + " rating" + (e.ratings === 1 ? "" : "s") })])
    ]);
    fill($("console-history"), state.history.length ? state.history.map(function (s) {
      return el("li", { text: (s.date || "").slice(0, 10) + " · " + s.ref + " · " + s.plan + " · " +
        s.status + (s.rating ? " · rated " + s.rating + "/5" : "") });
    }) : [el("li", { class: "muted", text: "No sessions yet." })]);
  }

  // ---------------------------------------------------------------- alerts
  function ring() {
    if (!audio) return;
    try {
      if (audio.state === "suspended") audio.resume();
      [0, 0.18].forEach(function (at) {
        var tone = audio.createOscillator(), gain = audio.createGain();
        tone.frequency.value = 880;
        gain.gain.value = 0.15;
        tone.connect(gain);
        gain.connect(audio.destination);
        tone.start(audio.currentTime + at);
        tone.stop(audio.currentTime + at + 0.12);
      });
    } catch (e) { /* no sound available: the title and the notification remain */ }
  }

  function alertOffers(offers) {
    ring();
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    offers.forEach(function (offer) {
      try {
        var shown = new Notification("New request " + offer.ref, {
          body: offer.plan + " · " + offer.vehicle + "\n" + offer.problem, tag: offer.ref });
        shown.onclick = function () { window.focus(); shown.close(); };
      } catch (e) { /* some browsers only notify from a service worker */ }
    });
  }

  function alertsButton() {
    var button = $("console-alerts");
    var permission = "Notification" in window ? Notification.permission : "unsupported";
    if (audio && permission === "granted") {
      button.textContent = "Alerts on: sound and notifications";
      button.disabled = true;
    } else if (audio && permission !== "default") {
      button.textContent = "Alerts on: sound (notifications blocked in this browser)";
      button.disabled = true;
    }
  }

  $("console-alerts").addEventListener("click", function () {
    var Context = window.AudioContext || window.webkitAudioContext;
    try { audio = audio || (Context ? new Context() : null); } catch (e) { audio = null; }
    audio = audio || { state: "none" };
    if ("Notification" in window && Notification.permission === "default") {
      Notification.requestPermission().then(alertsButton, alertsButton);
    }
    alertsButton();
  });

  // ---------------------------------------------------------------- state
  function render(state) {
    var fresh = known ? state.offers.filter(function (o) { return !known[o.ref]; }) : [];
    known = {};
    state.offers.forEach(function (o) { known[o.ref] = true; });
    renderOffers(state);
    renderJob(state);
    renderAvailability(state);
    renderHistory(state);
    $("console-status").textContent = "";
    if (fresh.length) alertOffers(fresh);
  }

  function refresh() {
    if (!token) return;
    if (loading) { again = true; return; }
    loading = true;
    fetch(STATE_URL, { headers: { "X-Visitor-Token": token }, cache: "no-store" })
      .then(function (response) {
        return response.json().then(function (body) {
          if (response.ok) render(body);
          else $("console-status").textContent = (body.error && body.error.message) || "Could not load the console.";
        });
      })
      .catch(function () { $("console-status").textContent = "Could not reach the server; retrying."; })
      .then(function () { loading = false; if (again) { again = false; refresh(); } });
  }

  W.on("welcome", function (hello) { token = hello.visitor; refresh(); });
  // A bot message (an offer, a match, an answer to "away") may change what the page shows.
  W.on("message", function () { clearTimeout(soon); soon = setTimeout(refresh, 150); });
  setInterval(refresh, REFRESH_MS);
})();
