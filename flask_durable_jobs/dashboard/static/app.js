// The dashboard's shell: who the caller is, the hash router, the refresh timer.
import { ApiError, errorText, get, session, setToken, token } from "./api.js";
import { clear, h, message } from "./dom.js";
import { overview } from "./overview.js";
import { jobList } from "./jobs.js";
import { jobDetail } from "./job.js";
import { batches, periodic, processes, queues } from "./pages.js";

const REFRESH_MS = 5000;
const main = document.getElementById("main");
let current = null; // { refresh } of the page on screen
let generation = 0; // a newer navigation makes older renders drop their answers
let refusal = ""; // why the API last refused us, when not for a missing token

function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = raw.split("?", 2);
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean);
  if (parts.length === 0) return { name: "overview", page: overview, params };
  if (parts[0] === "jobs" && parts.length === 2 && /^\d+$/.test(parts[1])) {
    return { name: "jobs", page: jobDetail, params, id: parts[1] };
  }
  const pages = { jobs: jobList, queues, periodic, batches, processes };
  const page = parts.length === 1 ? pages[parts[0]] : undefined;
  return page ? { name: parts[0], page, params } : { name: "", page: notFound, params };
}

function notFound(root) {
  root.append(h("h1", {}, "No such page"), h("p", {}, h("a", { href: "#/" }, "Overview")));
}

async function show({ focus = true } = {}) {
  const mine = ++generation;
  const r = route();
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === r.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = h("div", { class: "page", dataset: { page: r.name } });
  current = null;
  try {
    const result = await r.page(root, r.params, r.id, () => mine === generation);
    if (mine !== generation) return;
    current = result || null;
  } catch (exc) {
    if (mine !== generation) return;
    if (exc instanceof ApiError && exc.status === 401) return login(exc.message);
    root.append(message("error", errorText(exc)));
  }
  clear(main).append(root);
  if (focus) main.focus({ preventScroll: true });
}

async function refresh() {
  if (document.visibilityState !== "visible" || !current || !current.refresh) return;
  if (document.getElementById("confirm").open) return;
  const mine = generation;
  try {
    await current.refresh(() => mine === generation);
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) login(exc.message);
  }
}

function login(why) {
  generation++;
  current = null;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", {
    id: "token", type: "password", name: "token", autocomplete: "current-password",
    required: true, spellcheck: "false",
  });
  const status = h("p", { class: "note error", role: "alert", hidden: !why }, why || "");
  const form = h("form", { class: "login", onsubmit: async (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    input.value = "";
    if (!(await whoami(status))) {
      setToken(null);
      return;
    }
    start();
  } },
  h("h1", {}, "Log in"),
  h("p", {}, "Enter an admin token (DURABLE_JOBS_ADMIN_TOKEN, or DURABLE_JOBS_ADMIN_READ_TOKEN"
    + " to look without acting). It stays in this tab only."),
  h("label", { for: "token" }, "Token"), input,
  h("button", { type: "submit" }, "Log in"), status);
  clear(main).append(form);
  input.focus();
}

// Learn the caller's role; false (with the reason shown) when refused.
async function whoami(status) {
  try {
    const me = await get("/whoami");
    session.role = me.role;
    session.via = me.via;
    return true;
  } catch (exc) {
    // 401 only asks for a token; anything else (the authorizer said no) is worth saying.
    refusal = exc instanceof ApiError && exc.status === 401 ? "" : errorText(exc);
    if (status) {
      status.hidden = false;
      status.textContent = exc instanceof ApiError && exc.status === 401
        ? "That token is not valid."
        : errorText(exc);
    }
    return false;
  }
}

function start() {
  const who = document.getElementById("who");
  who.textContent = session.role === "all" ? "Full access" : "Read only";
  who.dataset.role = session.role;
  document.getElementById("logout").hidden = session.via !== "token";
  show();
}

async function boot() {
  document.getElementById("logout").addEventListener("click", () => {
    setToken(null);
    session.role = null;
    login("");
  });
  window.addEventListener("hashchange", () => {
    if (session.role) show();
  });
  document.addEventListener("visibilitychange", refresh);
  setInterval(refresh, REFRESH_MS);
  if (await whoami(null)) return start();
  // A stale token, or none: the host app's login may still let us in.
  if (token()) {
    setToken(null);
    if (await whoami(null)) return start();
  }
  login(refusal);
}

boot();
