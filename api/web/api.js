// The sensor's API as the page calls it: the token (this tab only), GETs with it, polls with If-None-Match.
// The token lives in sessionStorage and travels only in the Authorization header: never in a URL, never logged.

const TOKEN_KEY = "otsensor.token";

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  keep(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  forget() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An answer other than 200/304: `message` is the API's own (its one error shape), else the HTTP status. */
export class ApiError extends Error {
  constructor(status, message, identifier) {
    super(message);
    this.status = status;
    this.identifier = identifier;
  }
}

function url(path) {
  // relative to the page, so a sensor served under a reverse proxy's sub-path still works
  return new URL(path.replace(/^\//, ""), document.baseURI);
}

/**
 * GET `path` of the API with `token` (default: the tab's). With `etag`, a 304 answer gives
 * {status: 304}; a 200 gives {status, etag, data}. Anything else throws ApiError.
 */
export async function get(path, { etag = null, token = session.token } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = token;
  if (etag) headers["If-None-Match"] = etag;
  // no-store: the page does its own revalidation; the browser's cache would turn our 304s back into 200s
  const response = await fetch(url(path), { headers, cache: "no-store", credentials: "omit", redirect: "error" });
  if (response.status === 304) return { status: 304, etag };
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && typeof body.message === "string" ? body.message : `HTTP ${response.status}`;
    throw new ApiError(response.status, message, body && body.identifier);
  }
  return { status: response.status, etag: response.headers.get("ETag"), data: body };
}

/**
 * Polls a set of list endpoints, each with the ETag of its last answer, and keeps the last data.
 * poll() resolves to the names whose data changed since the previous poll.
 */
export class Poller {
  constructor(paths, optional = []) {
    this.paths = paths; // name -> path
    this.optional = new Set(optional); // names whose endpoint may not exist on this sensor (404: stop asking)
    this.etags = {};
    this.data = {};
    this.missing = new Set(); // optional names whose endpoint answered 404
  }

  /** Take an answer already in hand as the last one for `name`: the next poll asks with its ETag. */
  seed(name, answer) {
    this.etags[name] = answer.etag;
    this.data[name] = answer.data;
  }

  async poll() {
    const names = Object.keys(this.paths).filter((name) => !this.missing.has(name));
    const answers = await Promise.all(
      names.map(async (name) => {
        try {
          return [name, await get(this.paths[name], { etag: this.etags[name] })];
        } catch (error) {
          if (error instanceof ApiError && error.status === 404 && this.optional.has(name)) {
            this.missing.add(name);
            return [name, null];
          }
          throw error;
        }
      }),
    );
    const changed = [];
    for (const [name, answer] of answers) {
      if (answer === null || answer.status === 304) continue;
      this.etags[name] = answer.etag;
      this.data[name] = answer.data;
      changed.push(name);
    }
    return changed;
  }
}
