// Overview: counts from GET /stats, health, throughput per minute, live processes.
import { ApiError, STATUSES, get, optional, request } from "./api.js";
import { badge, clear, duration, h, link, s, table } from "./dom.js";
import { processTable } from "./pages.js";

const SERIES = ["succeeded", "retried", "dead"];

async function load() {
  const [stats, health, throughput, procs] = await Promise.all([
    get("/stats"),
    request("/health", { accept: [503] }).then((r) => r.data),
    optional("/throughput", { minutes: 60 }),
    optional("/processes").catch((exc) => {
      if (exc instanceof ApiError && exc.status === 403) return null;
      throw exc;
    }),
  ]);
  return { stats, health, throughput, procs };
}

export async function overview(root) {
  const body = h("div");
  root.append(h("h1", {}, "Overview"), body);
  const draw = (data) => clear(body).append(...render(data).filter(Boolean));
  draw(await load());
  return {
    refresh: async (fresh) => {
      const data = await load();
      if (fresh()) draw(data);
    },
  };
}

function render({ stats, health, throughput, procs }) {
  const cards = h("div", { class: "cards", id: "status-counts" },
    STATUSES.map((status) => h("a", { class: "card", href: link("/jobs", { status }) },
      h("span", { class: "label" }, badge(status)),
      h("span", { class: "count", dataset: { count: status } }, stats.by_status[status] ?? 0))),
    h("div", { class: "card total" }, h("span", { class: "label" }, "total"),
      h("span", { class: "count", dataset: { count: "total" } }, stats.total)));

  const healthy = health && health.healthy;
  const facts = h("dl", { class: "facts", id: "health" },
    fact("Health", healthy ? "healthy" : "unhealthy", { class: healthy ? "ok" : "bad" }),
    fact("Due now", health && health.due_count !== null ? health.due_count : "—",
      { dataset: { fact: "due" } }),
    fact("Oldest due", duration(stats.oldest_due_age_seconds), { dataset: { fact: "oldest-due" } }),
    fact("Expired leases", health ? health.expired_leases ?? "—" : "—",
      { dataset: { fact: "expired-leases" } }),
    fact("Scheduler here", health ? health.scheduler : "—"));
  const problems = health && health.problems && health.problems.length
    ? h("ul", { class: "problems" }, health.problems.map((p) => h("li", {}, p))) : null;
  const unhandled = Object.entries(stats.unhandled || {});

  const types = Object.keys(stats.by_type).sort();
  const byType = types.length ? table(["type", ...STATUSES],
    types.map((type) => h("tr", {}, h("th", { scope: "row" }, type),
      STATUSES.map((status) => {
        const n = stats.by_type[type][status] ?? 0;
        return h("td", { class: "num" },
          n ? h("a", { href: link("/jobs", { job_type: type, status }) }, n) : "0");
      }))), { id: "by-type" }) : h("p", { class: "muted" }, "No jobs yet.");

  return [
    cards,
    h("section", {}, h("h2", {}, "Health"), facts, problems,
      unhandled.length ? h("p", { class: "note warn" },
        "Due jobs with no handler in this process: ",
        unhandled.map(([type, n]) => `${type} (${n})`).join(", ")) : null),
    h("section", {}, h("h2", {}, "Last hour, per minute"), chart(throughput)),
    h("section", {}, h("h2", {}, "By type"), byType),
    h("section", {}, h("h2", {}, "Processes"), procs === null
      ? h("p", { class: "muted" }, "This server does not list processes.")
      : processTable(procs, true)),
  ];
}

function fact(term, value, attrs = {}) {
  return h("div", {}, h("dt", {}, term), h("dd", attrs, value));
}

function chart(data) {
  if (!data) return h("p", { class: "muted" }, "This server does not report throughput.");
  const buckets = data.buckets;
  const peak = Math.max(1, ...buckets.map((b) => SERIES.reduce((n, k) => n + b[k], 0)));
  const width = 600;
  const height = 140;
  const step = width / buckets.length;
  const bars = [];
  buckets.forEach((b, i) => {
    let y = height;
    for (const key of SERIES) {
      if (!b[key]) continue;
      const hgt = (b[key] / peak) * (height - 4);
      y -= hgt;
      bars.push(s("rect", { x: (i * step + 0.5).toFixed(1), y: y.toFixed(1),
        width: Math.max(1, step - 1).toFixed(1), height: hgt.toFixed(1), class: "bar " + key },
      s("title", {}, `${new Date(b.minute).toLocaleTimeString()}: ${b[key]} ${key}`)));
    }
  });
  const summary = SERIES.map((k) => `${data.totals[k]} ${k}`).join(", ");
  return h("figure", { class: "chart", id: "throughput" },
    s("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
      "aria-label": `Jobs per minute over the last ${data.minutes} minutes: ${summary}` },
    s("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }), bars),
    h("figcaption", {}, SERIES.map((k) => h("span", { class: "legend " + k },
      h("span", { class: "swatch" }), ` ${k} `, h("strong", { dataset: { total: k } },
        data.totals[k]))),
    h("span", { class: "muted" }, ` · peak ${peak}/min`)));
}
