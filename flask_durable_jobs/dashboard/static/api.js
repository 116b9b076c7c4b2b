// The admin API, as the dashboard calls it. Writes are fetch() calls with a
// JSON body and "Content-Type: application/json": a page on another site
// cannot make a browser send that without a CORS preflight the API never
// grants. The token (when one is used) lives in this tab's sessionStorage and
// travels only in the Authorization header, never in a URL or a cookie.

export const API = document.documentElement.dataset.api || "";
const TOKEN_KEY = "durable_jobs_token";

export const session = { role: null, via: null };

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function canWrite() {
  return session.role === "all";
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") q.append(key, value);
  }
  const text = q.toString();
  return text ? "?" + text : "";
}

// { status, data } for a 2xx answer (and for the given extra statuses);
// ApiError with the API's own message otherwise.
export async function request(path, { method = "GET", body, params, accept = [] } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token();
  if (bearer) headers.Authorization = "Bearer " + bearer;
  const init = { method, headers, credentials: "same-origin", cache: "no-store", redirect: "error" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  let res;
  try {
    res = await fetch(API + path + query(params), init);
  } catch (exc) {
    throw new ApiError(0, "network", "the server did not answer (" + exc.message + ")");
  }
  let data = null;
  if (res.status !== 204) {
    try {
      data = await res.json();
    } catch {
      data = null;
    }
  }
  if (!res.ok && !accept.includes(res.status)) {
    const error = (data && data.error) || {};
    throw new ApiError(res.status, error.code || "error", error.message || res.statusText);
  }
  return { status: res.status, data };
}

export async function get(path, params) {
  return (await request(path, { params })).data;
}

export async function post(path, body) {
  return request(path, { method: "POST", body });
}

export async function del(path) {
  return request(path, { method: "DELETE" });
}

// A read that a server without the route answers 404: null instead of an error.
export async function optional(path, params) {
  try {
    return await get(path, params);
  } catch (exc) {
    if (exc instanceof ApiError && (exc.status === 404 || exc.status === 405)) return null;
    throw exc;
  }
}

export const STATUSES = ["pending", "running", "retrying", "succeeded", "dead", "cancelled"];

export function errorText(exc) {
  if (exc instanceof ApiError) return `${exc.status || ""} ${exc.message}`.trim();
  return String(exc && exc.message ? exc.message : exc);
}
