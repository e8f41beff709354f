// Jobs: the operator's (every customer's, GET /v1/operator/…) or a customer's own
// (GET /v1/jobs…, which answers 404 for anyone else's): progress, tasks by state,
// throughput, failures with their reasons, and per task its attempts with the sentence that
// explains each placement (core/scheduler.py's reasons, kept on every attempt).

import { get, q } from "./api.js";
import { lineChart } from "./chart.js";
import { ago, bar, card, credits, figures, h, table, when } from "./dom.js";

const id = (n) => encodeURIComponent(String(n));

const PATHS = {
  admin: {
    jobs: "/v1/operator/jobs?limit=50",
    progress: (j) => `/v1/operator/jobs/${id(j)}/progress`,
    tasks: (j, state) => q(`/v1/operator/jobs/${id(j)}/tasks`, { state, limit: 100 }),
    task: (t) => `/v1/operator/tasks/${id(t)}`,
  },
  customer: {
    jobs: "/v1/jobs?limit=50",
    progress: (j) => `/v1/jobs/${id(j)}/progress`,
    tasks: (j, state) => q(`/v1/jobs/${id(j)}/tasks`, { state, limit: 100 }),
    task: (t) => `/v1/tasks/${id(t)}`,
  },
};

export function jobsView(kind) {
  const paths = PATHS[kind];
  const picked = { job: null, task: null };
  return {
    id: "jobs",
    title: kind === "admin" ? "Jobs" : "My jobs",
    async render(refresh) {
      const [{ jobs }, usage] = await Promise.all([
        get(paths.jobs),
        kind === "customer" ? get("/v1/usage?limit=10") : null,
      ]);
      const out = [];
      if (usage) out.push(spending(usage, jobs));
      out.push(card(kind === "admin" ? "Jobs of every customer" : "Jobs", jobTable(jobs, kind, picked, refresh)));
      if (picked.job !== null && jobs.some((j) => j.id === picked.job)) {
        out.push(await jobPanel(paths, jobs.find((j) => j.id === picked.job), picked, refresh));
      }
      if (picked.task !== null) out.push(await taskPanel(paths, picked.task));
      return out;
    },
  };
}

function spending(usage, jobs) {
  const spent = jobs.reduce((sum, j) => sum + (j.cost || 0), 0);
  return card(
    "Spending",
    figures(
      [
        ["balance", usage.balance_text],
        ["credit limit", credits(usage.credit_limit)],
        ["these jobs cost", credits(spent)],
        ["of it for checks", credits(jobs.reduce((sum, j) => sum + (j.checks_cost || 0), 0))],
      ],
      "spending",
    ),
  );
}

function jobTable(jobs, kind, picked, refresh) {
  const cols = [
    ["job", (j) => String(j.id), "num"],
    ["name", (j) => j.name],
  ];
  if (kind === "admin") cols.push(["customer", (j) => `${j.customer_name} (${j.customer_id})`]);
  cols.push(
    ["state", (j) => h("span", { class: `state state-${j.state}` }, j.state)],
    ["progress", (j) => bar(j.finished, j.total, `${j.finished} / ${j.total}`)],
    ["failed", (j) => String(j.failed), "num"],
    ["cost", (j) => credits(j.cost), "num"],
    ["submitted", (j) => ago(j.created_at)],
  );
  return table(cols, jobs, {
    id: "jobs-table",
    empty: "no jobs yet",
    rowAttrs: (j) => ({
      class: `job-row clickable${picked.job === j.id ? " picked" : ""}`,
      dataset: { job: j.id },
      title: "show its tasks",
      onclick: () => {
        picked.job = j.id;
        picked.task = null;
        refresh();
      },
    }),
  });
}

async function jobPanel(paths, job, picked, refresh) {
  const [progress, { tasks }, failed] = await Promise.all([
    get(paths.progress(job.id)),
    get(paths.tasks(job.id)),
    get(paths.tasks(job.id, "failed")),
  ]);
  const st = progress.states;
  // the rate over the last third of the job's span: steadier than the newest bucket alone
  const recent = progress.throughput.slice(-10);
  const span = recent.length > 1 ? (recent[1].at - recent[0].at) * recent.length : 0;
  const rate = span > 0 ? recent.reduce((sum, b) => sum + b.count, 0) / span : 0;
  const all = progress.throughput;
  const whole = all.length > 1 ? (all[1].at - all[0].at) * all.length : 0;
  const mean = whole > 0 ? st.done / whole : 0;
  const running = job.state === "running";
  return h(
    "section",
    { class: "card", id: "job-panel", dataset: { job: job.id } },
    h("h2", {}, `Job ${job.id}: `, job.name),
    bar(job.finished, job.total, `${job.finished} of ${job.total} tasks finished`),
    figures(
      [
        ["pending", String(st.pending)],
        ["running", String(st.leased)],
        ["checking", String(st.verifying)],
        ["done", String(st.done)],
        ["failed", String(st.failed)],
        ["cancelled", String(st.cancelled)],
        running
          ? ["throughput now", `${rate.toFixed(2)} tasks/s`]
          : ["throughput (mean)", `${mean.toFixed(2)} tasks/s`],
        ["cost", credits(job.cost)],
      ],
      "task-states",
    ),
    job.cancel_reason ? h("p", { class: "error" }, "stopped: ", job.cancel_reason) : null,
    lineChart("tasks finished per second", [{ name: "done", points: progress.throughput.map((b) => [b.at, b.per_s]) }], {
      id: "throughput-chart",
      wide: true,
    }),
    h("h3", {}, "Failures"),
    table(
      [
        ["task", (t) => String(t.index), "num"],
        ["kind", (t) => (t.error ? t.error.kind : "")],
        ["reason", (t) => (t.error ? t.error.message || t.error.type : "")],
        ["attempts", (t) => String(t.attempts), "num"],
      ],
      failed.tasks,
      { id: "failures", empty: "no task has failed" },
    ),
    h("h3", {}, "Tasks ", h("small", {}, "(the first 100; click one for its attempts and placement)")),
    table(
      [
        ["task", (t) => String(t.index), "num"],
        ["state", (t) => h("span", { class: `state state-${t.state}` }, t.state)],
        ["node", (t) => t.node_id || (t.history.length ? t.history[t.history.length - 1].node_id : "")],
        ["attempts", (t) => String(t.attempts), "num"],
        ["waiting for", (t) => (t.waiting_for ? t.waiting_for.sentence : "")],
      ],
      tasks,
      {
        id: "tasks-table",
        rowAttrs: (t) => ({
          class: `task-row clickable${picked.task === t.id ? " picked" : ""}`,
          dataset: { task: t.id },
          onclick: () => {
            picked.task = t.id;
            refresh();
          },
        }),
      },
    ),
  );
}

async function taskPanel(paths, taskId) {
  const t = await get(paths.task(taskId));
  return h(
    "section",
    { class: "card", id: "task-panel", dataset: { task: t.id } },
    h("h2", {}, `Task ${t.index} of job ${t.job_id} (id ${t.id}): ${t.state}`),
    t.waiting_for ? h("p", { class: "waiting" }, t.waiting_for.sentence) : null,
    t.error ? h("p", { class: "error" }, `${t.error.kind}: `, t.error.message || t.error.type) : null,
    h("h3", {}, "Attempts and why each went where it did"),
    t.history.length
      ? h(
          "ol",
          { class: "attempts" },
          t.history.map((a) =>
            h(
              "li",
              { class: "attempt" },
              h("span", { class: "attempt-head" }, `#${a.n} on `, h("code", {}, a.node_id), ` · ${a.outcome || "running"}`,
                ` · leased ${when(a.leased_at)}`, a.ended_at ? ` · ended ${when(a.ended_at)}` : ""),
              h("span", { class: "reason" }, a.reason),
            ),
          ),
        )
      : h("p", { class: "empty" }, "no attempt yet: it waits for a device"),
  );
}
