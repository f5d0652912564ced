"""The accessibility scan: axe-core (WCAG 2.1 A/AA) over every page state a browser test reaches."""

from __future__ import annotations

from dataclasses import dataclass, field

from axe_playwright_python.sync_playwright import Axe

# Serious and critical violations fail a test; moderate and minor ones are not counted.
FAILING_IMPACTS = ("serious", "critical")
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

# Runs in every page the context opens: a scan after each load and after each htmx swap settles
# (one at a time, the latest state wins), each reported back to Python through a binding.
SCANNER = """(() => {
  // Only the portal's pages: a test that fails before it opens one leaves about:blank, which is no page of ours.
  if (window.top !== window || window.__axeScan || !location.protocol.startsWith("http")) return;
  let running = null, again = false, timer = null;
  const options = {resultTypes: ["violations"], runOnly: {type: "tag", values: %(tags)s}};
  async function scan() {
    clearTimeout(timer);
    timer = null;
    if (running) { again = true; return running; }
    running = (async () => {
      try {
        const result = await axe.run(document, options);
        const bad = result.violations.filter((v) => %(impacts)s.includes(v.impact)).map((v) => ({
          id: v.id, impact: v.impact, help: v.help,
          targets: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + " :: " + (n.failureSummary || "")),
        }));
        await window.__axeReport({url: location.pathname + location.search, bad});
      } catch (err) {
        await window.__axeReport({url: location.pathname, bad: [], error: String(err)});
      }
    })();
    await running;
    running = null;
    if (again) { again = false; await scan(); }
  }
  function soon() { clearTimeout(timer); timer = setTimeout(scan, 120); }
  window.__axeScan = async () => { await scan(); while (running) await running; };
  window.addEventListener("load", soon);
  document.addEventListener("htmx:afterSettle", soon);
})();"""


@dataclass
class Finding:
    """One page state's serious or critical violations."""

    url: str
    violations: list[dict]

    def describe(self) -> str:
        """The violations in a few readable lines."""
        lines = [f"{self.url}:"]
        for v in self.violations:
            lines.append(f"  [{v['impact']}] {v['id']}: {v['help']}")
            lines.extend(f"      {t}" for t in v["targets"])
        return "\n".join(lines)


@dataclass
class AccessibilityScan:
    """Collects the scans of every page of the browser contexts it is installed in."""

    states: int = 0
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    contexts: list = field(default_factory=list)

    def install(self, context) -> None:
        """Scan every page this context opens, after each load and each htmx swap."""
        import json

        script = Axe().axe_script + "\n" + SCANNER % {"tags": json.dumps(WCAG_TAGS),
                                                      "impacts": json.dumps(list(FAILING_IMPACTS))}
        context.expose_binding("__axeReport", lambda _source, report: self._record(report))
        context.add_init_script(script)
        self.contexts.append(context)

    def _record(self, report: dict) -> None:
        self.states += 1
        if report.get("error"):
            self.errors.append(f"{report['url']}: {report['error']}")
        if report["bad"]:
            self.findings.append(Finding(report["url"], report["bad"]))

    def flush(self) -> None:
        """Scan the state every open page is in now and wait for scans still running."""
        for context in self.contexts:
            for page in context.pages:
                if page.is_closed():
                    continue
                page.evaluate("() => window.__axeScan ? window.__axeScan() : null")

    def report(self) -> str:
        """Every finding, for a failing test's message."""
        return "\n".join(f.describe() for f in self.findings) + "".join(f"\nscan error: {e}" for e in self.errors)
