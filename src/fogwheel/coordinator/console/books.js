// The operator's CDN (GET /v1/cdn/stats with the admin key), the ledger's totals
// (GET /v1/ledger); the roll-outs are in rollouts.js.

import { get } from "./api.js";
import { bytes, card, credits, figures, h, pct, table } from "./dom.js";

export function cdnView() {
  return {
    id: "cdn",
    title: "CDN",
    async render() {
      const st = await get("/v1/cdn/stats");
      const served = Object.values(st.served_by_node).reduce((a, b) => a + b, 0);
      const seg = st.segments;
      const short = st.by_object.filter((o) => o.degraded || o.at_risk || o.below_k);
      return [
        card(
          "CDN",
          figures(
            [
              ["objects", String(st.objects)],
              ["fetches", String(st.fetches)],
              ["offload", st.offload === null ? "–" : pct(st.offload)],
              ["bytes delivered", bytes(st.bytes_delivered)],
              ["served by devices (receipted)", bytes(served)],
              ["repair traffic", bytes(st.repair_bytes)],
              ["segments full", `${seg.full} of ${seg.total}`],
              ["under-replicated", String(seg.degraded + seg.at_risk + seg.below_k)],
              ["below k (unreadable)", String(seg.below_k)],
              ["live devices", String(st.live_devices)],
            ],
            "cdn-figures",
          ),
        ),
        card(
          "Under-replicated objects",
          table(
            [
              ["object", (o) => h("span", {}, o.name, h("br"), h("code", {}, o.content_id))],
              ["k of n", (o) => `${o.k} of ${o.n}`],
              ["segments", (o) => String(o.segments), "num"],
              ["degraded", (o) => String(o.degraded), "num"],
              ["at risk", (o) => String(o.at_risk), "num"],
              ["below k", (o) => String(o.below_k), "num"],
              ["fewest devices", (o) => String(o.min_devices), "num"],
            ],
            short,
            { id: "under-replicated", empty: "every object's segments are fully spread" },
          ),
        ),
      ];
    },
  };
}

export function ledgerView() {
  return {
    id: "ledger",
    title: "Ledger",
    async render() {
      const books = await get("/v1/ledger");
      const sums = new Map();
      for (const [account, balance] of Object.entries(books.accounts)) {
        const kind = account.includes(":") ? account.slice(0, account.indexOf(":")) : account;
        const s = sums.get(kind) || { n: 0, balance: 0 };
        s.n += 1;
        s.balance += balance;
        sums.set(kind, s);
      }
      return [
        card(
          "Ledger",
          figures(
            [
              ["entries", String(books.entries)],
              ["sum of all balances", credits(books.total)],
              ["balanced", books.balanced ? "yes" : "NO: the books do not sum to 0"],
            ],
            "ledger-figures",
          ),
          table(
            [
              ["accounts", (r) => r[0]],
              ["how many", (r) => String(r[1].n), "num"],
              ["balance", (r) => credits(r[1].balance), "num"],
            ],
            [...sums.entries()].sort(),
            { id: "ledger-kinds" },
          ),
        ),
      ];
    },
  };
}

export { rolloutsView } from "./rollouts.js"; // docs/rollouts.md
