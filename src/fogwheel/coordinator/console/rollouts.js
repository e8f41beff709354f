// Roll-outs in small steps (docs/rollouts.md): every roll-out of an app or of the node agent
// with each recorded step and its reason (GET /v1/rollouts), and, for the operator, which
// agent version the live devices run (GET /v1/agent/releases).

import { get } from "./api.js";
import { bar, card, figures, h, pct, table, when } from "./dom.js";

function state(s) {
  return h("span", { class: `state state-${s === "active" ? "running" : s === "rolled_back" ? "failed" : s}` }, s.replace("_", " "));
}

function counts(arm) {
  return `${arm.ok} ok / ${arm.failed} failed`;
}

function rolloutCard(ro) {
  const of = ro.kind === "agent" ? "node agent" : `app ${ro.subject}`;
  const steps = ro.steps.map((s) => `${Math.round(100 * s)} %`).join(" → ");
  return card(
    `${of}: ${ro.old_version ? ro.old_version.slice(0, 16) : "installed"} → ${ro.new_version.slice(0, 16)}`,
    h(
      "p",
      { class: "rollout-now", dataset: { rollout: ro.id, state: ro.state } },
      state(ro.state),
      " ",
      bar(ro.state === "active" ? ro.share : ro.state === "done" ? 1 : 0, 1, `${pct(ro.state === "active" ? ro.share : ro.state === "done" ? 1 : 0)} of devices on the new version`),
      h("span", { class: "reason" }, ro.reason),
    ),
    h(
      "p",
      { class: "attempt-head" },
      `${ro.id}: steps ${steps}; rolled back when the new version fails more often than the old by over ${pct(ro.margin)} at ${pct(1 - ro.alpha)} confidence; promoted after ${ro.min_outcomes} outcomes a step`,
    ),
    table(
      [
        ["when (UTC)", (s) => when(s.at)],
        ["step", (s) => s.action],
        ["share", (s) => pct(s.share), "num"],
        ["new version", (s) => counts(s.new), "num"],
        ["old version", (s) => counts(s.old), "num"],
        ["why", (s) => s.reason],
      ],
      [...ro.history].reverse(),
      { class: "rollout-steps", empty: "no step yet" },
    ),
  );
}

function spreadCard(rel) {
  const live = Object.values(rel.spread).reduce((a, b) => a + b, 0);
  const rows = Object.entries(rel.spread).sort((a, b) => b[1] - a[1]);
  const published = new Map(rel.releases.map((r) => [r.version, r]));
  return card(
    "Agent versions on live devices",
    figures(
      [
        ["live devices", String(live)],
        ["versions running", String(rows.length)],
        ["published", String(rel.releases.length)],
      ],
      "agent-figures",
    ),
    table(
      [
        ["version", (r) => h("code", {}, r[0])],
        ["devices", (r) => bar(r[1], live || 1, `${r[1]} (${pct(live ? r[1] / live : 0)})`)],
        ["published", (r) => (published.has(r[0]) ? when(published.get(r[0]).created_at) : "installed")],
      ],
      rows,
      { id: "agent-spread", empty: "no live device has said its version yet" },
    ),
  );
}

export function rolloutsView(kind = "admin") {
  return {
    id: "rollouts",
    title: "Roll-outs",
    async render() {
      const list = await get("/v1/rollouts?limit=20");
      const out = [];
      if (kind === "admin") out.push(spreadCard(await get("/v1/agent/releases")));
      if (!list.rollouts.length) {
        out.push(
          card(
            "Roll-outs",
            h("p", { class: "empty", id: "rollouts" },
              "no roll-outs yet: `fogwheel agent publish WHEEL --canary 10%` or `fogwheel apps publish NAME … --canary 10%` starts one"),
          ),
        );
      } else {
        out.push(h("div", { id: "rollouts" }, list.rollouts.map(rolloutCard)));
      }
      return out;
    },
  };
}
