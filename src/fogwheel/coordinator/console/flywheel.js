// The flywheel over time (GET /v1/flywheel): devices → capacity → utilisation → work done →
// credits to owners, and the price, from the samples the coordinator takes every period.

import { get } from "./api.js";
import { lineChart, points, rates } from "./chart.js";
import { card, credits, figures, h, pct } from "./dom.js";

export function flywheelView() {
  return {
    id: "flywheel",
    title: "Flywheel",
    async render() {
      const { samples, period_s } = await get("/v1/flywheel?limit=720");
      const last = samples[samples.length - 1];
      const head = last
        ? figures(
            [
              ["devices online", String(last.devices_online)],
              ["cores online", String(last.cores_online)],
              ["utilisation", pct(last.utilisation)],
              ["tasks done", String(last.tasks_done)],
              ["paid to owners", credits(last.credits_to_owners)],
              ["price per core-hour", credits(last.per_cpu_hour)],
              ["price per GB served", credits(last.per_gb_served)],
            ],
            "flywheel-now",
          )
        : h("p", { class: "empty" }, `no sample yet: the first comes within ${period_s} s`);
      return [
        card(`The flywheel (a sample every ${period_s} s)`, head),
        h(
          "div",
          { class: "charts", id: "flywheel-charts" },
          lineChart("devices online", [{ name: "online", points: points(samples, "devices_online") }]),
          lineChart("cores online", [{ name: "cores", points: points(samples, "cores_online") }]),
          lineChart("disk online, GB", [{ name: "disk", points: points(samples, "disk_mb_online", 1 / 1000) }]),
          lineChart("uplink online (measured), Mbit/s", [{ name: "uplink", points: points(samples, "uplink_bps_online", 8e-6) }]),
          lineChart("utilisation (tasks held / slots online)", [{ name: "utilisation", points: points(samples, "utilisation", 100) }], {
            format: (v) => `${v.toFixed(0)}%`,
          }),
          lineChart("work done, tasks per minute", [{ name: "tasks", points: rates(samples, "tasks_done", 60) }]),
          lineChart("paid to owners, credits (cumulative)", [{ name: "credits", points: points(samples, "credits_to_owners", 1e-6) }]),
          lineChart("bytes served by devices, MB (cumulative)", [{ name: "served", points: points(samples, "bytes_served", 1e-6) }]),
          lineChart("price per core-hour, credits", [{ name: "per core-hour", points: points(samples, "per_cpu_hour", 1e-6) }]),
          lineChart("price per GB served, credits", [{ name: "per GB", points: points(samples, "per_gb_served", 1e-6) }]),
        ),
      ];
    },
  };
}
