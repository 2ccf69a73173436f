// sessiond dashboard: live regions over Server-Sent Events, QR countdowns, copy buttons.
// The pages work without it (forms post and redirect); this only keeps them current.
"use strict";

(function () {
  function announce(text) {
    var region = document.getElementById("announce");
    if (region) { region.textContent = text; }
  }

  // Remember what had the focus inside a region that is about to be replaced.
  function focusKey(region) {
    var active = document.activeElement;
    if (!active || !region.contains(active)) { return null; }
    if (active.id) { return "#" + CSS.escape(active.id); }
    var href = active.getAttribute("href");
    return href ? "[href=\"" + CSS.escape(href) + "\"]" : null;
  }

  function replace(region, html) {
    var key = focusKey(region);
    var before = region.querySelector("[data-state]");
    region.innerHTML = html;
    startCountdowns(region);
    var after = region.querySelector("[data-state]");
    if (after && (!before || before.dataset.state !== after.dataset.state) && region.id === "session-status") {
      announce("Status: " + after.textContent.trim());
    }
    if (key) {
      var again = region.querySelector(key);
      if (again) { again.focus(); }
    }
  }

  function live() {
    var source = document.querySelector("[data-live]");
    if (!source || !window.EventSource) { return; }
    var events = new EventSource(source.dataset.live);
    document.querySelectorAll("[data-region]").forEach(function (region) {
      events.addEventListener(region.id, function (event) { replace(region, event.data); });
    });
    events.addEventListener("end", function () { events.close(); window.location.reload(); });
    events.onerror = function () {
      // A closed stream reconnects by itself; a refused one (signed out) does not.
      if (events.readyState === EventSource.CLOSED) { window.location.reload(); }
    };
    window.addEventListener("pagehide", function () { events.close(); });
  }

  function startCountdowns(root) {
    root.querySelectorAll("[data-expires-at]").forEach(function (el) {
      var skew = Date.parse(el.dataset.serverNow) - Date.now();
      var ends = Date.parse(el.dataset.expiresAt);
      function tick() {
        var left = Math.max(0, Math.ceil((ends - (Date.now() + skew)) / 1000));
        el.textContent = left > 0 ? "expires in " + left + " s" : "expired; the next code is coming";
        if (left <= 0 || !document.contains(el)) { clearInterval(timer); }
      }
      var timer = setInterval(tick, 1000);
      tick();
    });
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var field = document.getElementById(button.dataset.copy);
        field.select();
        var done = function () { button.textContent = "Copied"; announce("Key copied"); };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
        } else {
          document.execCommand("copy");
          done();
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    startCountdowns(document);
    copyButtons();
    live();
  });
})();
