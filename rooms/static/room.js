/* The video join page: LiveKit's browser SDK (served by this service) for the video, this
   service for the access token, the countdown and the session's relayed chat. */
(function () {
  "use strict";

  var settings = JSON.parse(document.getElementById("settings").textContent);
  var base = settings.base;
  var LK = window.LivekitClient;
  var $ = function (id) { return document.getElementById(id); };
  var statusEl = $("status"), timerEl = $("timer"), videosEl = $("videos");
  var linesEl = $("lines"), audioEl = $("audio");

  var state = { over: false, status: null, secondsLeft: null, at: 0, lastLine: 0,
                room: null, connected: false, retry: 0, local: [], ending: false };
  window.autodoctorRoom = state;  // for a person debugging in the console (and the tests)

  function say(text, kind) {
    statusEl.textContent = text;
    statusEl.setAttribute("data-kind", kind || "info");
  }

  // ------------------------------------------------------------------ countdown

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function drawTimer() {
    if (state.over) {
      timerEl.textContent = "Session over";
      timerEl.setAttribute("data-level", "over");
      return;
    }
    if (state.secondsLeft === null) {
      timerEl.textContent = state.status === "waiting"
        ? "Starts when " + (settings.role === "customer" ? "you join" : "the customer joins")
        : "…";
      timerEl.setAttribute("data-level", "waiting");
      return;
    }
    var left = Math.max(0, state.secondsLeft - Math.floor((Date.now() - state.at) / 1000));
    timerEl.textContent = Math.floor(left / 60) + ":" + pad(left % 60) + " left";
    // The same steps as the chat's warnings: 5 minutes and 1 minute left.
    timerEl.setAttribute("data-level", left > 300 ? "green" : left >= 60 ? "yellow" : "red");
  }

  // ------------------------------------------------------------------ state and chat

  function addLine(line) {
    var li = document.createElement("li");
    if (line.mine) li.className = "mine";
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = line.mine ? "You" : line.who;
    var at = document.createElement("span");
    at.className = "at";
    at.textContent = line.at;
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = line.text;
    li.appendChild(who); li.appendChild(at); li.appendChild(text);
    linesEl.appendChild(li);
    linesEl.scrollTop = linesEl.scrollHeight;
  }

  function poll() {
    return fetch(base + "/state?after=" + state.lastLine, { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (s) {
        state.status = s.status;
        state.secondsLeft = s.seconds_left;
        state.at = Date.now();
        s.lines.forEach(function (line) {
          if (line.id > state.lastLine) { state.lastLine = line.id; addLine(line); }
        });
        if (s.over && !state.over) sessionOver();
        drawTimer();
      })
      .catch(function (status) {
        if (status === 403) { sessionOver("This link is no longer valid."); }
      });
  }

  function sessionOver(message) {
    state.over = true;
    say(message || "The session is over. Thank you! Your chat has the record and notes.",
        "over");
    if (state.room) state.room.disconnect();
    state.local.forEach(function (t) { t.stop(); });
    document.querySelectorAll(".controls button, .say button, .say input")
      .forEach(function (el) { el.disabled = true; });
    drawTimer();
  }

  var form = $("say");
  if (form) {
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var input = $("text"), text = input.value.trim();
      if (!text || state.over) return;
      var id = Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
      fetch(base + "/messages", { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify({ text: text, client_id: id }) })
        .then(function (r) {
          if (r.ok) { input.value = ""; return poll(); }
          return r.json().then(function (b) { say(b.message || "Not sent.", "problem"); });
        })
        .catch(function () { say("Not sent: no connection to the service. Try again.", "problem"); });
    });
  }

  var endButton = $("end");
  if (endButton) {
    endButton.addEventListener("click", function () {
      if (state.over) return;
      if (!state.ending) {  // a second tap confirms (no dialog: it works the same on a phone)
        state.ending = true;
        endButton.textContent = "Tap again to end";
        setTimeout(function () { state.ending = false; endButton.textContent = "End session"; },
                   5000);
        return;
      }
      endButton.disabled = true;
      fetch(base + "/end", { method: "POST" }).then(poll);
    });
  }

  // ------------------------------------------------------------------ video

  function tileFor(participant) {
    var id = "tile-" + participant.identity;
    var tile = document.getElementById(id);
    if (!tile) {
      tile = document.createElement("figure");
      tile.className = "tile remote";
      tile.id = id;
      var video = document.createElement("video");
      video.autoplay = true; video.playsInline = true;
      var caption = document.createElement("figcaption");
      caption.textContent = participant.name || settings.other;
      tile.appendChild(video); tile.appendChild(caption);
      // The other person's video first (larger), one's own after it.
      videosEl.insertBefore(tile, videosEl.firstChild);
      videosEl.classList.add("has-remote");
    }
    return tile;
  }

  function dropTile(id) {
    var tile = document.getElementById(id);
    if (tile) tile.remove();
    if (!videosEl.querySelector(".remote")) videosEl.classList.remove("has-remote");
  }

  function presence() {
    if (!state.room || state.over) return;
    var others = Array.from(state.room.remoteParticipants.values());
    if (!state.connected) return;
    if (others.length === 0) {
      say(settings.role === "observer" ? "Watching: nobody is in the room yet."
          : "Waiting for " + settings.other + " to join…", "info");
    } else {
      say(settings.role === "observer" ? "Watching (hidden; they can't see or hear you)."
          : "You're connected with " + settings.other + ".", "ok");
    }
  }

  function onTrack(track, publication, participant) {
    if (track.kind === LK.Track.Kind.Audio) {
      audioEl.appendChild(track.attach());
      return;
    }
    var tile = tileFor(participant);
    if (track.source === LK.Track.Source.ScreenShare) {
      tile = document.getElementById("tile-screen-" + participant.identity) || (function () {
        var t = tileFor({ identity: "screen-" + participant.identity,
                          name: (participant.name || settings.other) + "'s screen" });
        t.classList.add("screen");
        return t;
      })();
    }
    track.attach(tile.querySelector("video"));
  }

  function offTrack(track, publication, participant) {
    track.detach().forEach(function (el) { if (el.parentNode === audioEl) el.remove(); });
    if (track.source === LK.Track.Source.ScreenShare) dropTile("tile-screen-" + participant.identity);
  }

  function preview() {
    // The camera and microphone are asked for at once, so a person sees themselves (and
    // can allow them) while the room connects.
    if (settings.role === "observer") return Promise.resolve();
    return LK.createLocalTracks({ audio: true, video: true }).then(function (tracks) {
      state.local = tracks;
      tracks.forEach(function (t) {
        if (t.kind === LK.Track.Kind.Video) t.attach($("local-video"));
      });
      ["camera", "mic"].forEach(function (id) { $(id).disabled = false; });
    }).catch(function () {
      say("Your camera or microphone is not available (check the browser's permission). "
          + "You can still see and hear " + settings.other + ", and chat.", "problem");
    });
  }

  function toggle(kind, button, onText, offText) {
    var track = state.local.filter(function (t) { return t.kind === kind; })[0];
    if (!track) return;
    var muting = !track.isMuted;
    (muting ? track.mute() : track.unmute()).then(function () {
      button.textContent = muting ? offText : onText;
      button.setAttribute("aria-pressed", String(!muting));
    });
  }

  if ($("camera")) {
    $("camera").addEventListener("click", function () {
      toggle(LK.Track.Kind.Video, $("camera"), "Camera on", "Camera off");
    });
    $("mic").addEventListener("click", function () {
      toggle(LK.Track.Kind.Audio, $("mic"), "Microphone on", "Microphone off");
    });
  }
  if ($("screen")) {
    $("screen").addEventListener("click", function () {
      if (!state.room || !state.connected) return;
      var sharing = state.room.localParticipant.isScreenShareEnabled;
      state.room.localParticipant.setScreenShareEnabled(!sharing).then(function () {
        $("screen").textContent = sharing ? "Share screen" : "Stop sharing";
        $("screen").setAttribute("aria-pressed", String(!sharing));
      }).catch(function () { say("Screen sharing was not started.", "problem"); });
    });
  }

  function retryLater(message) {
    if (state.over || state.retryTimer) return;
    state.retry = Math.min(state.retry + 1, 6);
    var wait = Math.min(30, 2 * Math.pow(2, state.retry - 1));
    say(message + " Trying again in " + wait + " s. The chat still works.", "problem");
    state.retryTimer = setTimeout(function () { state.retryTimer = null; connect(); },
                                  wait * 1000);
  }

  function connect() {
    if (state.over) return;
    say("Connecting to the video…", "info");
    fetch(base + "/join", { method: "POST" })
      .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
      .then(function (answer) {
        var status = answer[0], body = answer[1];
        if (status === 410) { sessionOver(); return; }
        if (status === 409 && body.error === "not_ready") {
          retryLater("The video room is being prepared.");
          return;
        }
        if (status !== 200) { say(body.message || "Video is not available.", "problem"); return; }
        state.joined = { url: body.url, identity: body.identity, room: body.room };
        var room = state.room = new LK.Room({ adaptiveStream: true, dynacast: true });
        room.on(LK.RoomEvent.TrackSubscribed, onTrack);
        room.on(LK.RoomEvent.TrackUnsubscribed, offTrack);
        room.on(LK.RoomEvent.ParticipantConnected, presence);
        room.on(LK.RoomEvent.ParticipantDisconnected, function (p) {
          dropTile("tile-" + p.identity);
          dropTile("tile-screen-" + p.identity);
          presence();
        });
        room.on(LK.RoomEvent.Reconnecting, function () {
          say("Reconnecting… (your connection dropped)", "problem");
        });
        room.on(LK.RoomEvent.Reconnected, presence);
        room.on(LK.RoomEvent.Disconnected, function () {
          var was = state.connected;
          state.connected = false;
          // A connection that never opened is retried by connect() itself.
          if (was && !state.over) poll().then(function () {
            if (!state.over) retryLater("The video was disconnected.");
          });
        });
        return room.connect(body.url, body.token).then(function () {
          state.connected = true;
          state.retry = 0;
          presence();
          return Promise.all(state.local.map(function (t) {
            return room.localParticipant.publishTrack(t);
          }));
        }).then(function () {
          if ($("screen")) $("screen").disabled = false;
        }, function (error) {
          state.room = null;
          state.connectError = String(error && error.message || error);
          retryLater("Can't reach the video server.");
        });
      })
      .catch(function () { retryLater("Can't reach this service."); });
  }

  setInterval(drawTimer, 1000);
  setInterval(function () { if (!state.over) poll(); }, 2000);
  poll().then(function () {
    if (state.over) return;
    if (!LK) { say("The video client could not be loaded. You can still chat here.", "problem"); return; }
    if (!settings.video) { say("Video is not available for this session: use the chat.", "info"); return; }
    preview().then(connect);
  });
})();
