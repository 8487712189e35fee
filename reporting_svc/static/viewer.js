// SurveyMesh report viewer: draws the charts with vega-embed (served locally) and adds or
// replaces sections as the server announces them over server-sent events. The server
// renders every section (escaped by its templates); this script only places them.
(function () {
  "use strict";
  var root = document.getElementById("report");
  if (!root) return;
  var config = JSON.parse(document.getElementById("chart-config").textContent);
  var embedOptions = {
    renderer: "svg",
    config: config,
    actions: { export: true, source: false, compiled: false, editor: false },
  };

  function embedCharts(scope) {
    var figures = scope.querySelectorAll("figure.chart[data-chart]");
    Array.prototype.forEach.call(figures, function (figure) {
      if (figure.getAttribute("data-embedded")) return;
      var island = figure.querySelector("script.chart-spec");
      if (!island) return;
      figure.setAttribute("data-embedded", "pending");
      var target = document.createElement("div");
      figure.appendChild(target);
      var spec = JSON.parse(island.textContent);
      window.vegaEmbed(target, spec, embedOptions).then(
        function () { figure.setAttribute("data-embedded", "done"); },
        function (err) {
          figure.setAttribute("data-embedded", "failed");
          figure.classList.add("chart-error");
          target.textContent = "This chart could not be drawn.";
          if (window.console) console.error(err);
        }
      );
    });
  }

  function placeSection(fragment) {
    var template = document.createElement("template");
    template.innerHTML = fragment.html;
    var section = template.content.firstElementChild;
    if (!section) return;
    section.classList.add("is-new");
    var existing = document.getElementById(fragment.id);
    if (existing) {
      existing.replaceWith(section);
    } else {
      var container = document.getElementById("sections");
      var order = Number(fragment.order);
      var next = null;
      Array.prototype.some.call(container.children, function (el) {
        if (Number(el.getAttribute("data-order")) > order) { next = el; return true; }
        return false;
      });
      container.insertBefore(section, next);
    }
    embedCharts(section);
  }

  function setProgress(p) {
    var bar = document.getElementById("progress-bar");
    if (bar && typeof p.percent === "number") bar.style.width = p.percent + "%";
    var pct = document.getElementById("progress-percent");
    if (pct && typeof p.percent === "number") pct.textContent = p.percent + "%";
    var stage = document.getElementById("progress-stage");
    if (stage) stage.textContent = (p.stage || "").replace(/_/g, " ");
  }

  function finish(done) {
    var state = (done.state || "").replace("REPORT_STATE_", "").toLowerCase();
    root.setAttribute("data-state", done.state || "");
    root.setAttribute("data-running", "false");
    var label = document.getElementById("report-state");
    if (label) {
      label.textContent = state.charAt(0).toUpperCase() + state.slice(1);
      label.className = "state state-" + state;
    }
    var progress = document.getElementById("progress");
    if (progress) progress.classList.add("hidden");
    Array.prototype.forEach.call(document.querySelectorAll(".section-pending"), function (el) {
      el.remove();
    });
    if (state !== "completed" && !document.querySelector(".alert")) {
      var alert = document.createElement("div");
      alert.className = "alert";
      alert.setAttribute("role", "alert");
      alert.textContent = "This report " + state + ". " + (done.error || done.message || "");
      document.getElementById("sections").before(alert);
    }
    if (state === "completed") {
      Array.prototype.forEach.call(document.querySelectorAll(".actions .button"), function (a) {
        a.classList.remove("disabled");
        a.removeAttribute("aria-disabled");
        a.removeAttribute("title");
      });
    }
  }

  function follow() {
    var url = window.location.pathname.replace(/\/$/, "") + "/events?after=" +
      encodeURIComponent(root.getAttribute("data-after") || "0");
    var source = new EventSource(url);
    source.addEventListener("section", function (e) { placeSection(JSON.parse(e.data)); });
    source.addEventListener("progress", function (e) { setProgress(JSON.parse(e.data)); });
    source.addEventListener("done", function (e) {
      source.close();
      finish(JSON.parse(e.data));
    });
  }

  embedCharts(document);
  if (root.getAttribute("data-running") === "true") follow();
})();
