// The NodeODM API as the page uses it: every call carries the token (the page's ?token= or a login's).

const TOKEN_KEY = "odmfarm.token";

export class ApiError extends Error {
  constructor(message, { noRetry = false, status = 0 } = {}) {
    super(message);
    this.noRetry = noRetry;
    this.status = status;
  }
}

export class Api {
  constructor() {
    const fromUrl = new URLSearchParams(window.location.search).get("token");
    this.fromUrl = fromUrl !== null;
    this.token = fromUrl ?? window.localStorage.getItem(TOKEN_KEY) ?? "";
  }

  // a login token is kept for the next visit; a token from the URL stays in the URL
  remember(token) {
    this.token = token;
    window.localStorage.setItem(TOKEN_KEY, token);
  }

  forget() {
    this.token = "";
    window.localStorage.removeItem(TOKEN_KEY);
  }

  url(path, params = {}) {
    const query = new URLSearchParams();
    if (this.token) query.set("token", this.token);
    for (const [k, v] of Object.entries(params)) query.set(k, String(v));
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  }

  async get(path, params = {}) {
    return this.#json(await fetch(this.url(path, params), { cache: "no-store" }));
  }

  async post(path, fields = {}) {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null) body.set(k, String(v));
    return this.#json(await fetch(this.url(path), { method: "POST", body }));
  }

  async #json(response) {
    let body;
    try {
      body = await response.json();
    } catch {
      throw new ApiError(`HTTP ${response.status}: the answer is not JSON`, { status: response.status });
    }
    if (response.status === 401 || response.status === 403) {
      throw new ApiError(body?.error || "Unauthorized", { status: response.status, noRetry: true });
    }
    if (body && typeof body === "object" && !Array.isArray(body) && body.error) {
      throw new ApiError(body.error, { noRetry: !!body.noRetry, status: response.status });
    }
    if (!response.ok) throw new ApiError(`HTTP ${response.status}`, { status: response.status });
    return body;
  }

  // multipart upload with progress; resolves with the JSON answer, rejects with ApiError
  upload(path, files, onProgress) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      for (const file of files) form.append("images", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", this.url(path));
      xhr.responseType = "json";
      xhr.timeout = 10 * 60 * 1000;
      xhr.upload.onprogress = (e) => onProgress?.(e.loaded);
      xhr.onload = () => {
        const body = xhr.response;
        if (xhr.status !== 200) reject(new ApiError(`HTTP ${xhr.status}`, { status: xhr.status }));
        else if (!body) reject(new ApiError("The answer is not JSON"));
        else if (body.error) reject(new ApiError(body.error, { noRetry: !!body.noRetry }));
        else resolve(body);
      };
      xhr.onerror = () => reject(new ApiError("Network error (the connection was lost)"));
      xhr.ontimeout = () => reject(new ApiError("The upload timed out"));
      xhr.onabort = () => reject(new ApiError("The upload was interrupted"));
      xhr.send(form);
    });
  }
}

export const STATUS = { 10: "Queued", 20: "Running", 30: "Failed", 40: "Completed", 50: "Canceled" };
export const ACTIVE = new Set([10, 20]);

// run `worker` on every item with at most `limit` at a time
export async function pool(items, limit, worker) {
  const queue = [...items];
  const runners = Array.from({ length: Math.min(limit, queue.length) }, async () => {
    while (queue.length) await worker(queue.shift());
  });
  await Promise.all(runners);
}
