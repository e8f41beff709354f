// Devices: the operator's whole fleet (GET /v1/operator/fleet) or an owner's own
// (GET /v1/owners/me/fleet), with state, resources, trust, uptime, work now and earnings;
// devices online over time from the flywheel's history; an owner's earnings and payouts.

import { get } from "./api.js";
import { lineChart, points } from "./chart.js";
import { ago, card, credits, duration, figures, h, pct, table } from "./dom.js";

function deviceColumns(withOwner) {
  const cols = [
    ["device", (d) => h("span", {}, h("strong", { class: "device-name" }, d.name), h("br"), h("code", {}, d.id))],
    ["state", (d) => h("span", { class: `state state-${d.state}` }, d.state)],
  ];
  if (withOwner) cols.push(["owner", (d) => d.owner_id]);
  cols.push(
    ["network", (d) => d.network || "–"],
    ["cores · RAM · disk", (d) => `${d.cores} · ${d.memory_mb} MB · ${(d.disk_mb / 1000).toFixed(1)} GB`],
    ["reputation", (d) => d.reputation.toFixed(2), "num"],
    ["reliability", (d) => pct(d.reliability), "num"],
    ["up for", (d) => (d.state === "up" && d.joined_at ? duration(Date.now() / 1000 - d.joined_at) : "–")],
    ["last seen", (d) => ago(d.last_seen)],
    ["work now", (d) => work(d.work)],
    ["done", (d) => String(d.done), "num"],
    ["earned", (d) => credits(d.earned), "num"],
  );
  return cols;
}

function work(byJob) {
  const entries = Object.entries(byJob || {});
  if (!entries.length) return "idle";
  return entries.map(([job, n]) => `job ${job} ×${n}`).join(", ");
}

function states(byState, total) {
  const order = ["up", "draining", "gone", "quarantined", "revoked"];
  return figures(
    [["devices", String(total)], ...order.map((s) => [s, String(byState[s] || 0)])],
    "fleet-states",
  );
}

export function fleetView() {
  return {
    id: "fleet",
    title: "Fleet",
    async render() {
      const [fleet, history] = await Promise.all([
        get("/v1/operator/fleet?limit=200"),
        get("/v1/flywheel?limit=720"),
      ]);
      const shown = fleet.devices.length < fleet.total ? ` (the oldest ${fleet.devices.length})` : "";
      return [
        card(
          "Fleet",
          states(fleet.by_state, fleet.total),
          lineChart("devices online", [{ name: "online", points: points(history.samples, "devices_online") }], {
            id: "online-chart",
            wide: true,
          }),
        ),
        card(`Devices${shown}`, table(deviceColumns(true), fleet.devices, { id: "fleet-table", empty: "no device has joined" })),
      ];
    },
  };
}

export function devicesView() {
  return {
    id: "devices",
    title: "My devices",
    async render() {
      const [fleet, statement] = await Promise.all([
        get("/v1/owners/me/fleet?limit=1000"),
        get("/v1/owners/me/statement"),
      ]);
      // the statement's lines are per UTC day and source, newest first: earned per day
      const perDay = new Map();
      for (const line of statement.lines) perDay.set(line.day, (perDay.get(line.day) || 0) + line.earned);
      const days = [...perDay.keys()].sort();
      let sum = 0;
      const cumulative = days.map((d) => {
        sum += perDay.get(d);
        return [Date.parse(`${d}T00:00:00Z`) / 1000, sum / 1e6];
      });
      return [
        card(
          "My devices",
          states(fleet.by_state, fleet.total),
          table(deviceColumns(false), fleet.devices, { id: "fleet-table", empty: "no device of yours has joined" }),
        ),
        card(
          "Earnings",
          figures(
            [
              ["earned", statement.earned_text],
              ["paid out", credits(statement.paid_out)],
              ["balance", credits(statement.balance)],
            ],
            "earnings",
          ),
          lineChart("earned, credits (cumulative, per UTC day)", [{ name: "earned", points: cumulative }], {
            id: "earnings-chart",
            wide: true,
            days: true,
          }),
          table(
            [
              ["day", (l) => l.day],
              ["source", (l) => l.source],
              ["earned", (l) => credits(l.earned), "num"],
              ["entries", (l) => String(l.entries), "num"],
            ],
            statement.lines.slice(0, 50),
            { id: "statement", empty: "nothing earned yet" },
          ),
        ),
        card(
          "Payouts",
          statement.payouts.length
            ? table(
                [
                  ["when", (p) => String(p.at ?? p.created_at ?? "")],
                  ["amount", (p) => credits(p.amount), "num"],
                ],
                statement.payouts,
                { id: "payouts" },
              )
            : h("p", { class: "empty", id: "payouts" }, "no payouts yet: the coordinator does not pay out yet; earnings stay in your balance"),
        ),
      ];
    },
  };
}
