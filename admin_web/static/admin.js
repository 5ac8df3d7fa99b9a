// Live refresh: an element with data-refresh="URL" is re-read from URL every few seconds
// (the server renders the fragment, escaped), unless someone is choosing in it right now.
(function () {
  "use strict";
  var PERIOD_MS = 5000;
  function busy(el) {
    var active = document.activeElement;
    if (active && el.contains(active) && active.tagName !== "BUTTON") return true;
    var selects = el.querySelectorAll("select");
    for (var i = 0; i < selects.length; i++) if (selects[i].value) return true;
    return false;
  }
  function refresh(el) {
    if (document.hidden || busy(el)) return;
    fetch(el.getAttribute("data-refresh"), {credentials: "same-origin", redirect: "follow"})
      .then(function (response) {
        if (response.redirected || !response.ok) {
          // The login lapsed: show the login page rather than a stale list.
          if (response.redirected) window.location.reload();
          return null;
        }
        return response.text();
      })
      .then(function (html) {
        if (html !== null && !busy(el)) el.innerHTML = html;
      })
      .catch(function () { /* offline for a moment: try again next time */ });
  }
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    window.setInterval(function () { refresh(el); }, PERIOD_MS);
  });
})();
