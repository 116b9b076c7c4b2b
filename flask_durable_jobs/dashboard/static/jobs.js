// Jobs: the list with every filter of the API, keyset pages, bulk actions.
import { STATUSES, canWrite, errorText, get, post } from "./api.js";
import { badge, confirmAction, h, link, message, table, when } from "./dom.js";

const PER_PAGE = 50;
// The list filters the API takes, as the hash keeps them.
const TEXT_FILTERS = [
  ["job_type", "Type"], ["queue", "Queue"], ["owner", "Owner"],
  ["idempotency_key", "Idempotency key"], ["batch_id", "Batch"],
];
// Which statuses each bulk action changes (the API skips the others).
export const ACTIONS = {
  retry: { verb: "Retry", from: ["dead", "cancelled"] },
  cancel: { verb: "Cancel", from: ["pending", "retrying", "running"] },  // running: asked to stop
  delete: { verb: "Delete", from: ["pending", "retrying", "succeeded", "dead", "cancelled"] },
};

// The filter of the hash, as the API's query parameters.
export function filterOf(params) {
  const filter = {};
  for (const [key, value] of params) {
    if (value === "" || key === "cursor" || key === "page") continue;
    if (key === "status" || key.startsWith("payload.") || key === "created_after"
        || key === "created_before" || TEXT_FILTERS.some(([k]) => k === key)) {
      filter[key] = value;
    }
  }
  return filter;
}

export async function jobList(root, params) {
  const filter = filterOf(params);
  const cursor = params.get("cursor") || undefined;
  const page = Number(params.get("page") || 1);
  const data = await get("", { ...filter, per_page: PER_PAGE, cursor,
    page: cursor || page === 1 ? undefined : page });
  root.append(h("h1", {}, "Jobs"), filterForm(filter));
  const keyset = Object.prototype.hasOwnProperty.call(data, "next_cursor");
  const selected = new Set();
  let allMatching = false;
  const total = typeof data.total === "number" ? data.total : null;

  const status = h("div", { class: "status-line", role: "status", id: "list-status" });
  const bulkBar = h("div", { class: "bulk", hidden: !canWrite() });
  const selectAllMatching = h("button", { type: "button", class: "link", id: "select-matching",
    hidden: true, onclick: () => { allMatching = true; update(); } },
  total === null ? "Select every job matching the filter" : `Select all ${total} matching the filter`);
  const boxes = [];
  const head = h("input", { type: "checkbox", "aria-label": "Select every job on this page",
    id: "select-page", onchange: () => {
      for (const box of boxes) {
        box.checked = head.checked;
        if (head.checked) selected.add(box.value); else selected.delete(box.value);
      }
      if (!head.checked) allMatching = false;
      update();
    } });

  function update() {
    const n = allMatching ? (total ?? "all") : selected.size;
    status.textContent = selected.size || allMatching
      ? (allMatching ? `All ${n} jobs matching the filter are selected.` : `${n} selected.`)
      : "";
    selectAllMatching.hidden = allMatching || !head.checked || boxes.length === 0;
    for (const b of bulkBar.querySelectorAll("button")) b.disabled = !(selected.size || allMatching);
  }

  for (const [action, spec] of Object.entries(ACTIONS)) {
    bulkBar.append(h("button", { type: "button", class: action === "retry" ? "" : "danger",
      dataset: { bulk: action }, disabled: true, onclick: () => bulk(action, spec) }, spec.verb + "…"));
  }

  async function bulk(action, spec) {
    let count;
    let body;
    if (allMatching) {
      body = { filter };
      count = await countMatching(filter, spec.from);
    } else {
      body = { ids: [...selected].map(Number) };
      count = data.items.filter((j) => selected.has(String(j.id)) && spec.from.includes(j.status))
        .length;
    }
    const scope = allMatching ? "matching the filter" : `of the ${selected.size} selected`;
    const text = count === 0
      ? `No job ${scope} is in a status that allows ${action}.`
      : `${spec.verb} ${count} job${count === 1 ? "" : "s"} ${scope}? Only jobs that are `
        + `${spec.from.join(", ")} change.`;
    if (count === 0) {
      status.textContent = text;
      return;
    }
    if (!(await confirmAction(text, `${spec.verb} ${count}`))) return;
    try {
      const { data: answer } = await post("/bulk/" + action, body);
      location.hash = link("/jobs", { ...filter, done: `${action}:${answer.changed}` });
    } catch (exc) {
      status.replaceChildren(message("error", errorText(exc)));
    }
  }

  const done = params.get("done");
  if (done) {
    const [action, n] = done.split(":");
    root.append(message("ok", `${ACTIONS[action] ? ACTIONS[action].verb : action}: ${n} job(s) changed.`));
  }

  const rows = data.items.map((job) => {
    const box = h("input", { type: "checkbox", value: String(job.id),
      "aria-label": `Select job ${job.id}`, onchange: () => {
        if (box.checked) selected.add(box.value);
        else { selected.delete(box.value); allMatching = false; head.checked = false; }
        update();
      } });
    boxes.push(box);
    const payload = typeof job.payload === "string" ? job.payload : JSON.stringify(job.payload);
    return h("tr", { dataset: { job: job.id } },
      canWrite() ? h("td", {}, box) : null,
      h("td", { class: "num" }, h("a", { href: `#/jobs/${job.id}` }, job.id)),
      h("td", {}, job.job_type), h("td", {}, job.queue), h("td", {}, badge(job.status)),
      h("td", { class: "num" }, `${job.attempts}/${job.max_attempts}`),
      h("td", {}, when(job.created_at)),
      h("td", {}, when(job.finished_at || job.run_at)),
      h("td", { class: "payload" }, h("code", {}, payload.length > 120 ? payload.slice(0, 120) + "…" : payload)));
  });
  const columns = [canWrite() ? head : null, "id", "type", "queue", "status", "attempts",
    "created", "run at / finished", "payload"].filter((c) => c !== null);
  root.append(
    h("div", { class: "list-tools" }, bulkBar, selectAllMatching,
      h("span", { class: "muted", id: "list-total" },
        total === null ? "" : `${data.total_exact === false ? "about " : ""}${total}`
          + ` job${total === 1 ? "" : "s"} match`)),
    status,
    rows.length ? table(columns, rows, { id: "jobs" }) : h("p", { class: "muted", id: "no-jobs" },
      "No job matches."),
    pager(filter, data, keyset, page, cursor));
  update();
}

// How many jobs matching `filter` are in one of `statuses`: one count per status.
async function countMatching(filter, statuses) {
  const wanted = filter.status ? statuses.filter((s) => s === filter.status) : statuses;
  const totals = await Promise.all(wanted.map((status) =>
    get("", { ...filter, status, per_page: 1 }).then((d) => d.total)));
  return totals.reduce((a, b) => a + b, 0);
}

function pager(filter, data, keyset, page, cursor) {
  const nav = h("nav", { class: "pager", "aria-label": "Pages of jobs" });
  if (cursor || page > 1) nav.append(h("a", { href: link("/jobs", filter), id: "first-page" }, "« Newest"));
  if (keyset) {
    if (data.next_cursor) {
      nav.append(h("a", { href: link("/jobs", { ...filter, cursor: data.next_cursor }),
        id: "next-page", rel: "next" }, "Older »"));
    }
  } else if (page * data.per_page < data.total) {
    nav.append(h("a", { href: link("/jobs", { ...filter, page: page + 1 }), id: "next-page",
      rel: "next" }, "Older »"));
  }
  return nav;
}

function filterForm(filter) {
  const payloadKey = Object.keys(filter).find((k) => k.startsWith("payload.")) || "";
  const field = (name, label, attrs = {}) => h("label", {}, h("span", {}, label),
    h("input", { name, value: filter[name] || "", ...attrs }));
  const toLocal = (iso) => {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  };
  const form = h("form", { class: "filters", id: "filters", onsubmit: (event) => {
    event.preventDefault();
    const fd = new FormData(form);
    const next = {};
    for (const [key, value] of fd) {
      const text = String(value).trim();
      if (!text || key === "payload_field" || key === "payload_value") continue;
      next[key] = key.startsWith("created_") ? new Date(text).toISOString() : text;
    }
    const pf = String(fd.get("payload_field") || "").trim();
    if (pf) next["payload." + pf] = String(fd.get("payload_value") || "");
    location.hash = link("/jobs", next);
  } },
  h("label", {}, h("span", {}, "Status"), h("select", { name: "status" },
    h("option", { value: "" }, "any"),
    STATUSES.map((st) => h("option", { value: st, selected: filter.status === st }, st)))),
  TEXT_FILTERS.map(([name, label]) => field(name, label)),
  h("label", {}, h("span", {}, "Payload field"),
    h("input", { name: "payload_field", value: payloadKey.slice(8), placeholder: "user_id" })),
  h("label", {}, h("span", {}, "equals"),
    h("input", { name: "payload_value", value: payloadKey ? filter[payloadKey] : "" })),
  h("label", {}, h("span", {}, "Created after"),
    h("input", { name: "created_after", type: "datetime-local", value: toLocal(filter.created_after) })),
  h("label", {}, h("span", {}, "Created before"),
    h("input", { name: "created_before", type: "datetime-local", value: toLocal(filter.created_before) })),
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Filter"),
    h("a", { href: "#/jobs", class: "button secondary" }, "Clear")));
  return form;
}
