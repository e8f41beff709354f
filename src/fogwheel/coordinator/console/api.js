// The console's only way to the coordinator: fetch against /v1 with the signed-in key.
//
// The key lives in sessionStorage (this tab only, gone when it closes) and travels in the
// Authorization header, never in a URL (URLs end up in logs, history and Referer headers).

const KEY = "fogwheel.key";

export function savedKey() {
  return sessionStorage.getItem(KEY);
}

export function saveKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GET a /v1 path as JSON; ApiError with the coordinator's sentence when it refuses. */
export async function get(path, key = savedKey()) {
  const res = await fetch(path, {
    headers: { authorization: `Bearer ${key}`, accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  if (!res.ok) {
    let message = `HTTP ${res.status}`;
    try {
      const body = await res.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch {
      // not JSON: keep the status
    }
    throw new ApiError(res.status, message);
  }
  return res.json();
}

/** `path` with query parameters, each encoded. */
export function q(path, params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) u.set(k, v);
  const text = u.toString();
  return text ? `${path}?${text}` : path;
}
