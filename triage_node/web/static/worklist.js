// Refreshes the worklist table body without a reload. The fragment request does not extend the session, so an
// unattended screen still logs out after the configured idle time; a 401 sends the browser to the login form.
(function () {
  "use strict";
  var table = document.getElementById("worklist");
  if (!table) { return; }
  var body = table.querySelector("tbody");
  var stamp = document.getElementById("updated");
  var url = table.dataset.pollUrl;
  var ms = parseInt(table.dataset.pollMs, 10) || 5000;

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) {
          window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
          return null;
        }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        var unread = r.headers.get("X-Unread-Critical");
        document.title = (unread && unread !== "0" ? "(" + unread + ") " : "") + "Worklist · triage-node";
        return r.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        body.innerHTML = html;
        table.dataset.polled = String(parseInt(table.dataset.polled || "0", 10) + 1);
        if (stamp) { stamp.textContent = new Date().toLocaleTimeString(); }
        window.setTimeout(poll, ms);
      })
      .catch(function () {
        if (stamp) { stamp.textContent = "offline, retrying"; }
        window.setTimeout(poll, ms);
      });
  }
  window.setTimeout(poll, ms);
})();
