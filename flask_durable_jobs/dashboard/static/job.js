// One job: payload and result, progress, timeline, error, and the actions its
// status allows.
import { canWrite, del, errorText, get, post } from "./api.js";
import { badge, clear, confirmAction, h, json, link, message, when } from "./dom.js";

const LIVE = ["pending", "running", "retrying"];

export async function jobDetail(root, params, id) {
  const body = h("div");
  const notice = h("div", { id: "job-notice" });
  root.append(notice, body);
  let job = await get("/" + id);
  const draw = () => clear(body).append(...render(job, act).filter(Boolean));

  async function act(action) {
    const verbs = { retry: "Retry", cancel: "Cancel", delete: "Delete" };
    const running = job.status === "running";
    const text = action === "delete"
      ? `Delete job ${job.id}? This cannot be undone.`
      : action === "cancel" && running
        ? `Ask running job ${job.id} to stop? Its handler sees the request the next time it checks.`
        : `${verbs[action]} job ${job.id}?`;
    if (!(await confirmAction(text, verbs[action]))) return;
    try {
      if (action === "delete") {
        await del("/" + job.id);
        location.hash = link("/jobs", { done: "delete:1" });
        return;
      }
      const answer = await post(`/${job.id}/${action}`);
      job = answer.status === 202 ? await get("/" + job.id) : answer.data;
      notice.replaceChildren(message("ok", answer.status === 202
        ? "Cancel requested; the job stops when its handler next checks."
        : `Job ${job.id} is now ${job.status}.`));
      draw();
    } catch (exc) {
      notice.replaceChildren(message("error", errorText(exc)));
    }
  }

  draw();
  return {
    refresh: async (fresh) => {
      if (!LIVE.includes(job.status)) return;
      const next = await get("/" + id);
      if (fresh()) {
        job = next;
        draw();
      }
    },
  };
}

function allowed(job) {
  return {
    retry: job.status === "dead" || job.status === "cancelled",
    cancel: job.status === "pending" || job.status === "retrying"
      || (job.status === "running" && !job.cancel_requested_at),
    delete: job.status !== "running",
  };
}

function render(job, act) {
  const can = allowed(job);
  const buttons = canWrite()
    ? h("div", { class: "actions", id: "job-actions" },
      can.retry ? h("button", { type: "button", dataset: { action: "retry" },
        onclick: () => act("retry") }, "Retry") : null,
      can.cancel ? h("button", { type: "button", class: "danger", dataset: { action: "cancel" },
        onclick: () => act("cancel") }, job.status === "running" ? "Request cancel" : "Cancel") : null,
      can.delete ? h("button", { type: "button", class: "danger", dataset: { action: "delete" },
        onclick: () => act("delete") }, "Delete") : null)
    : null;

  const fields = [
    ["Queue", h("a", { href: link("/jobs", { queue: job.queue }) }, job.queue)],
    ["Priority", job.priority],
    ["Attempts", `${job.attempts} of ${job.max_attempts}`],
    ["Owner", job.owner || "—"],
    ["Idempotency key", job.idempotency_key || "—"],
    ["Worker", job.worker_id || "—"],
    ["Batch", job.batch_id ? h("a", { href: link("/batches", { id: job.batch_id }), id: "batch-link" },
      job.batch_id) : "—"],
    ["On orphan", job.orphan_policy],
    ["Callback", job.callback_url ? [job.callback_url, " · ", job.callback_status || "—",
      ` · ${job.callback_attempts} attempt(s)`] : "—"],
  ];
  if (job.callback_error) fields.push(["Callback error", job.callback_error]);
  if (job.cancel_requested_at) fields.push(["Cancel requested", when(job.cancel_requested_at)]);

  const events = [
    ["created", job.created_at], ["due", job.run_at], ["started", job.started_at],
    ["cancel requested", job.cancel_requested_at], ["lease ends", job.lease_expires_at],
    ["finished", job.finished_at], ["updated", job.updated_at],
  ].filter(([, at]) => at).sort((a, b) => new Date(a[1]) - new Date(b[1]));

  return [
    h("h1", {}, `Job ${job.id} `, h("span", { class: "type" }, job.job_type), " ", badge(job.status)),
    buttons,
    progress(job.progress),
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Details"), h("dl", { class: "facts" },
        fields.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))))),
      h("section", {}, h("h2", {}, "Timeline"), h("ol", { class: "timeline", id: "timeline" },
        events.map(([what, at]) => h("li", {}, h("time", { datetime: at }, when(at)), " ", what))))),
    h("section", {}, h("h2", {}, "Payload"), h("pre", { id: "payload", tabindex: 0 }, json(job.payload))),
    h("section", {}, h("h2", {}, "Result"), h("pre", { id: "result", tabindex: 0 },
      job.result === null || job.result === undefined ? "—" : json(job.result))),
    job.last_error ? h("section", {}, h("h2", {}, "Last error"),
      h("pre", { class: "error", id: "last-error", tabindex: 0 }, job.last_error)) : null,
  ];
}

function progress(p) {
  if (!p) return null;
  const fraction = Math.min(1, Math.max(0, Number(p.fraction) || 0));
  return h("section", { class: "progress", id: "progress" },
    h("h2", {}, "Progress"),
    h("progress", { max: 1, value: fraction, "aria-label": "Progress" }),
    h("span", { class: "num" }, ` ${Math.round(fraction * 100)} %`),
    p.message ? h("p", {}, p.message) : null,
    p.data !== null && p.data !== undefined ? h("pre", {}, json(p.data)) : null,
    p.at ? h("p", { class: "muted" }, "reported ", when(p.at)) : null);
}
