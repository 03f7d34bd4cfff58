// Chunked upload through the NodeODM API: init, upload in batches (each retried, then file by file so that
// a bad file is named), commit. Progress is counted in bytes.

import { ApiError } from "./api.js";

const BATCH_FILES = 8;
const BATCH_BYTES = 16 * 1024 * 1024;
const PARALLEL = 2;
export const TRIES = 4;
const BACKOFF_MS = [500, 1500, 4000];

export function batches(files) {
  const out = [];
  let current = [];
  let bytes = 0;
  for (const file of files) {
    if (current.length && (current.length >= BATCH_FILES || bytes + file.size > BATCH_BYTES)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(file);
    bytes += file.size;
  }
  if (current.length) out.push(current);
  return out;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Upload `files` to the session `uuid`; calls onProgress(sentBytes, totalBytes) and resolves with
// {failed: [{file, message}]}. A refusal marked noRetry (an empty image, a quota) is not tried again.
export async function uploadFiles(api, uuid, files, onProgress) {
  const total = files.reduce((sum, f) => sum + f.size, 0);
  const done = new Map(); // file -> bytes counted as sent
  const report = () => onProgress([...done.values()].reduce((a, b) => a + b, 0), total);
  const failed = [];

  async function send(group) {
    let lastError = null;
    for (let attempt = 0; attempt < TRIES; attempt += 1) {
      if (attempt) await sleep(BACKOFF_MS[Math.min(attempt - 1, BACKOFF_MS.length - 1)]);
      try {
        await api.upload(`/task/new/upload/${encodeURIComponent(uuid)}`, group, (loaded) => {
          // spread the request's progress over its files, in order
          let left = loaded;
          for (const f of group) {
            done.set(f, Math.min(f.size, Math.max(0, left)));
            left -= f.size;
          }
          report();
        });
        for (const f of group) done.set(f, f.size);
        report();
        return null;
      } catch (error) {
        lastError = error instanceof ApiError ? error : new ApiError(String(error));
        for (const f of group) done.set(f, 0);
        report();
        if (lastError.noRetry) break;
      }
    }
    return lastError;
  }

  async function sendBatch(group) {
    const error = await send(group);
    if (!error) return;
    if (group.length === 1) {
      failed.push({ file: group[0], message: error.message });
      return;
    }
    // find which files fail: each on its own, with its own tries
    for (const file of group) {
      const own = await send([file]);
      if (own) failed.push({ file, message: own.message });
    }
  }

  const queue = batches(files);
  await Promise.all(
    Array.from({ length: Math.min(PARALLEL, queue.length) }, async () => {
      while (queue.length) await sendBatch(queue.shift());
    }),
  );
  return { failed, sent: files.filter((f) => !failed.some((x) => x.file === f)) };
}
