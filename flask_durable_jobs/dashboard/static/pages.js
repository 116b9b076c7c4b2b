// Queues, recurring schedules, batches and processes.
import { STATUSES, canWrite, errorText, get, optional, post } from "./api.js";
import { ago, badge, clear, h, link, message, table, when } from "./dom.js";

function itemsOf(data) {
  if (data === null || data === undefined) return null;
  return Array.isArray(data) ? data : data.items || data.queues || data.processes || [];
}

const missing = (what) => h("p", { class: "muted" }, `This server does not offer ${what}.`);

export async function queues(root) {
  const body = h("div");
  const notice = h("div");
  root.append(h("h1", {}, "Queues"), notice, body);
  const draw = (list) => {
    if (list === null) return clear(body).append(missing("queue controls"));
    const rows = list.map((q) => h("tr", { dataset: { queue: q.name } },
      h("th", { scope: "row" }, h("a", { href: link("/jobs", { queue: q.name }) }, q.name)),
      h("td", {}, q.paused ? h("span", { class: "badge paused" }, "paused")
        : h("span", { class: "badge running" }, "active")),
      STATUSES.map((st) => h("td", { class: "num" }, (q.counts || {})[st] ?? 0)),
      canWrite() ? h("td", {}, h("button", { type: "button", class: q.paused ? "" : "danger",
        dataset: { toggle: q.paused ? "resume" : "pause" }, onclick: () => toggle(q) },
      q.paused ? "Resume" : "Pause")) : null));
    const cols = ["queue", "state", ...STATUSES, canWrite() ? "" : null].filter((c) => c !== null);
    clear(body).append(list.length ? table(cols, rows, { id: "queues" })
      : h("p", { class: "muted" }, "No queues yet."));
  };
  const load = async () => itemsOf(await optional("/queues"));
  async function toggle(q) {
    const action = q.paused ? "resume" : "pause";
    try {
      await post(`/queues/${encodeURIComponent(q.name)}/${action}`);
      notice.replaceChildren(message("ok", `Queue ${q.name} ${q.paused ? "resumed" : "paused"}.`));
      draw(await load());
    } catch (exc) {
      notice.replaceChildren(message("error", errorText(exc)));
    }
  }
  draw(await load());
  return { refresh: async (fresh) => { const list = await load(); if (fresh()) draw(list); } };
}

export async function periodic(root) {
  const data = await optional("/periodic");
  root.append(h("h1", {}, "Recurring jobs"));
  const list = itemsOf(data);
  if (list === null) return root.append(missing("recurring schedules"));
  if (!list.length) {
    return root.append(h("p", { class: "muted" }, "No recurring schedule is registered."));
  }
  // Each fire time's job has the idempotency key periodic:<key>:<fire time>:
  // one lookup through the key's unique index finds the last fire's job.
  const lastJobs = await Promise.all(list.map((p) => (p.last_fire_at
    ? get("", { idempotency_key: `periodic:${p.key}:${p.last_fire_at}`, per_page: 1 })
      .then((d) => d.items[0] || null).catch(() => null)
    : null)));
  const lastJob = (i) => {
    const job = lastJobs[i];
    return job ? h("a", { href: `#/jobs/${job.id}` }, badge(job.status)) : "—";
  };
  root.append(h("p", { class: "muted" }, "Schedules registered in the process that answered."),
    table(["key", "type", "schedule", "time zone", "last fired", "next", "last job"],
      list.map((p, i) => h("tr", { dataset: { schedule: p.key } },
        h("th", { scope: "row" }, p.key),
        h("td", {}, h("a", { href: link("/jobs", { job_type: p.job_type }) }, p.job_type)),
        h("td", {}, h("code", {}, p.cron)), h("td", {}, p.timezone),
        h("td", {}, when(p.last_fire_at)), h("td", {}, when(p.next_fire_at)),
        h("td", { class: "last-job" }, lastJob(i)))), { id: "schedules" }));
}

export async function batches(root, params) {
  const id = params.get("id") || "";
  const input = h("input", { name: "id", id: "batch-id", value: id, required: true });
  root.append(h("h1", {}, "Batches"),
    h("form", { class: "filters", onsubmit: (event) => {
      event.preventDefault();
      location.hash = link("/batches", { id: input.value.trim() });
    } }, h("label", { for: "batch-id" }, h("span", {}, "Batch id")), input,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Show"))));
  if (!id) {
    return root.append(h("p", { class: "muted" },
      "Enter the id enqueue_batch() returned, or follow a batch link from a job."));
  }
  let batch;
  try {
    batch = await get("/batches/" + encodeURIComponent(id));
  } catch (exc) {
    return root.append(message("error", errorText(exc)));
  }
  root.append(h("section", { id: "batch" },
    h("h2", {}, "Batch ", h("code", {}, batch.batch_id)),
    h("p", {}, `${batch.total} job(s); `, batch.all_terminal ? "all ended" : "still running",
      batch.completed_at ? ` · completed ${when(batch.completed_at)}` : "",
      batch.on_complete ? ` · then runs ${batch.on_complete}` : ""),
    table(STATUSES, [h("tr", {}, STATUSES.map((st) => h("td", { class: "num" },
      h("a", { href: link("/jobs", { batch_id: batch.batch_id, status: st }) },
        batch.by_status[st] ?? 0))))]),
    h("p", {}, h("a", { href: link("/jobs", { batch_id: batch.batch_id }) }, "Jobs of this batch"))));
}

export async function processes(root) {
  const body = h("div");
  root.append(h("h1", {}, "Processes"), body);
  const draw = (data) => clear(body).append(data === null ? missing("a process list")
    : processTable(data, false));
  draw(await optional("/processes"));
  return { refresh: async (fresh) => { const d = await optional("/processes"); if (fresh()) draw(d); } };
}

const PROCESS_COLUMNS = ["host", "pid", "queues", "concurrency", "jobs_in_flight", "version",
  "started_at", "last_seen"];

// The live process records; columns are whatever the records hold, the usual ones first.
export function processTable(data, brief) {
  const list = itemsOf(data) || [];
  if (!list.length) return h("p", { class: "muted", id: "no-processes" }, "No process is working the queue.");
  const keys = [...new Set(list.flatMap((p) => Object.keys(p)))];
  const ordered = [...PROCESS_COLUMNS.filter((k) => keys.includes(k)),
    ...keys.filter((k) => !PROCESS_COLUMNS.includes(k))];
  const columns = brief ? ordered.slice(0, 6) : ordered;
  const cell = (key, value) => {
    if (key === "queues" && value === null) return "all"; // null: every queue
    if (value === null || value === undefined) return "—";
    if (key === "last_seen" || key === "started_at") return `${when(value)} (${ago(value)})`;
    if (Array.isArray(value)) return value.join(", ") || "all";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  };
  return table(columns.map((c) => c.replace(/_/g, " ")), list.map((p) => h("tr", {},
    columns.map((key) => h("td", {}, cell(key, p[key]))))), { id: "processes" });
}
