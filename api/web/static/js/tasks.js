// The task list: one page of rows at a time, newest first. Only the visible page is fetched, and of it only
// the tasks that may still change (queued, running, never seen, or not checked for a while) are polled;
// a row's DOM is built once and then only its changed texts are touched. 1,000 tasks cost 50 rows.

import { ACTIVE, STATUS, pool } from "./api.js";
import { clear, dialog, formatBytes, formatDate, formatDuration, h, setText } from "./dom.js";
import { OptionsForm } from "./options.js";

export const PAGE_SIZE = 50;
const STALE_MS = 30_000; // a finished task is checked again this often (someone may restart it)
const CONSOLE_LINES = 2000; // lines kept in a console view; older ones are dropped from the top
const PARALLEL = 6;

// the single assets of a task (shared/assets.py ASSETS), offered once the task has completed
export const ASSETS = [
  "orthophoto.tif", "orthophoto.png", "orthophoto.mbtiles", "dsm.tif", "dtm.tif",
  "georeferenced_model.laz", "georeferenced_model.las", "georeferenced_model.ply", "georeferenced_model.csv",
  "textured_model.zip", "report.pdf", "cameras.json", "shots.geojson",
];

class Row {
  constructor(list, uuid) {
    this.list = list;
    this.uuid = uuid;
    this.status = h("span", { class: "badge", "data-role": "status" }, "…");
    this.name = h("span", { class: "task-name", "data-role": "name" });
    this.sub = h("span", { class: "task-uuid muted" }, uuid);
    this.images = h("span", { class: "num", "data-role": "images" });
    this.bar = h("div", { class: "bar" });
    this.pct = h("span", { class: "progress-label" });
    this.progress = h("div", { class: "progress", "data-role": "progress" }, this.bar, this.pct);
    this.elapsed = h("span", { class: "num", "data-role": "elapsed" });
    this.created = h("span", { class: "muted", "data-role": "created" });
    this.head = h("div", {
      class: "task-row", role: "button", tabindex: "0", "aria-expanded": "false",
      onclick: () => list.toggle(uuid),
      onkeydown: (e) => { if (e.key === "Enter") list.toggle(uuid); },
    },
    this.status, h("span", { class: "task-title" }, this.name, this.sub), this.images, this.progress, this.elapsed, this.created);
    this.el = h("div", { class: "task", dataset: { uuid } }, this.head);
    this.detail = null;
    this.key = "";
  }

  update(info, fetchedAt) {
    this.info = info;
    this.fetchedAt = fetchedAt;
    const code = info.status?.code;
    const key = JSON.stringify([code, info.progress, info.name, info.imagesCount, info.processingTime, info.status?.errorMessage]);
    this.el.dataset.status = String(code);
    if (key === this.key) return;
    this.key = key;
    setText(this.status, STATUS[code] || `Status ${code}`);
    this.status.className = `badge s${code}`;
    setText(this.name, info.name || "(no name)");
    this.name.title = info.name || "";
    setText(this.images, `${info.imagesCount} img`);
    const pct = code === 40 ? 100 : Math.max(0, Math.min(100, Number(info.progress) || 0));
    this.bar.style.width = `${pct}%`;
    this.progress.dataset.progress = String(pct);
    this.progress.className = `progress s${code}`;
    setText(this.pct, `${pct.toFixed(pct % 1 ? 1 : 0)}%`);
    setText(this.created, formatDate(info.dateCreated));
    this.tick();
    if (this.detail) this.detail.update(info);
  }

  // the elapsed time runs on between polls while the task runs
  tick() {
    const info = this.info;
    if (!info) return;
    let ms = info.processingTime;
    if (ACTIVE.has(info.status?.code) && ms >= 0) ms += Date.now() - this.fetchedAt;
    setText(this.elapsed, formatDuration(ms));
  }
}

class Detail {
  constructor(list, row) {
    this.list = list;
    this.row = row;
    this.uuid = row.uuid;
    this.line = 0;
    this.assetsFor = "";
    this.error = h("div", { class: "task-error", hidden: true });
    this.meta = h("dl", { class: "meta" });
    this.console = h("pre", { class: "console", "data-role": "console", tabindex: "0" });
    this.follow = h("input", { type: "checkbox", checked: true });
    this.actions = h("div", { class: "actions" });
    this.downloads = h("div", { class: "downloads", "data-role": "downloads" });
    this.el = h("div", { class: "task-detail" },
      this.error,
      h("div", { class: "detail-grid" },
        h("div", {}, this.meta, this.actions, this.downloads),
        h("div", { class: "console-box" },
          h("div", { class: "console-head" }, h("strong", {}, "Console"),
            h("label", { class: "check" }, this.follow, " follow")),
          this.console)));
  }

  update(info) {
    const code = info.status?.code;
    if (ACTIVE.has(code) && this.code !== undefined && !ACTIVE.has(this.code)) {
      // restarted: the node cleared the console, the new run's lines start again at 0
      this.line = 0;
      this.console.textContent = "";
    }
    this.code = code;
    setText(this.error, info.status?.errorMessage || "");
    this.error.hidden = !info.status?.errorMessage;
    clear(this.meta);
    const options = (info.options || []).map((o) => `${o.name}=${typeof o.value === "object" ? JSON.stringify(o.value) : o.value}`);
    const pairs = [
      ["UUID", info.uuid], ["Created", formatDate(info.dateCreated)], ["Images", info.imagesCount],
      ["Processing time", formatDuration(info.processingTime)], ["Options", options.join(", ") || "defaults"],
    ];
    for (const [k, v] of pairs) this.meta.append(h("dt", {}, k), h("dd", {}, String(v)));
    this.#actions(code);
    if (code === 40 || code === 50) this.#loadAssets(info);
    else if (this.assetsFor) {
      this.assetsFor = "";
      clear(this.downloads);
    }
  }

  #actions(code) {
    const want = [];
    if (ACTIVE.has(code)) want.push("cancel");
    if (code === 30 || code === 40 || code === 50) want.push("restart");
    want.push("remove");
    const key = want.join(",");
    if (this.actions.dataset.key === key) return;
    this.actions.dataset.key = key;
    clear(this.actions);
    const labels = { cancel: "Cancel", restart: "Restart…", remove: "Remove" };
    for (const action of want) {
      this.actions.append(h("button", {
        type: "button", class: `btn ${action === "remove" ? "danger" : ""}`, "data-action": action,
        onclick: (e) => { e.stopPropagation(); this.list.command(action, this.uuid); },
      }, labels[action]));
    }
  }

  // which assets exist: a HEAD per asset, once per finished run (a task cancelled before it completed has none)
  async #loadAssets(info) {
    const runKey = `${info.status?.code}/${info.processingTime}`;
    if (this.assetsFor === runKey) return;
    this.assetsFor = runKey;
    const api = this.list.api;
    const found = new Map();
    await pool(["all.zip", ...ASSETS], 4, async (asset) => {
      try {
        const response = await fetch(api.url(`/task/${info.uuid}/download/${asset}`), { method: "HEAD", redirect: "manual" });
        const type = response.headers.get("Content-Type") || "";
        if (response.type === "opaqueredirect" || (response.ok && !type.startsWith("application/json"))) {
          found.set(asset, response.headers.get("Content-Length"));
        }
      } catch {
        // not listed; all.zip still has it
      }
    });
    if (this.assetsFor !== runKey) return;
    clear(this.downloads);
    if (!found.has("all.zip") && info.status?.code !== 40) {
      this.downloads.append(h("p", { class: "muted" }, "No results: the task ended before it completed."));
      return;
    }
    const link = (asset, label) => h("a", { href: api.url(`/task/${info.uuid}/download/${asset}`), download: asset, "data-asset": asset }, label);
    const all = link("all.zip", "Download all (all.zip)");
    all.className = "btn primary";
    const size = found.get("all.zip");
    this.downloads.append(h("div", { class: "downloads-head" }, all, size ? h("span", { class: "muted" }, ` ${formatBytes(Number(size))}`) : null));
    const singles = ASSETS.filter((a) => found.has(a));
    if (!singles.length) {
      this.downloads.append(h("p", { class: "muted" }, "No single asset: everything is in all.zip."));
      return;
    }
    this.downloads.append(h("ul", { class: "asset-list" }, singles.map((asset) => h("li", {},
      link(asset, asset), found.get(asset) ? h("span", { class: "muted" }, ` ${formatBytes(Number(found.get(asset)))}`) : null))));
  }

  // the console tail: only the lines after the last one seen
  async poll() {
    const lines = await this.list.api.get(`/task/${this.uuid}/output`, { line: this.line });
    if (!Array.isArray(lines) || !lines.length) return;
    this.line += lines.length;
    const atBottom = this.console.scrollTop + this.console.clientHeight >= this.console.scrollHeight - 8;
    this.console.append(document.createTextNode(lines.join("\n") + "\n"));
    this.console.dataset.lines = String(this.line);
    if (this.console.textContent.length > CONSOLE_LINES * 200) {
      const text = this.console.textContent.split("\n").slice(-CONSOLE_LINES).join("\n");
      this.console.textContent = text;
    }
    if (this.follow.checked && atBottom) this.console.scrollTop = this.console.scrollHeight;
  }
}

export class TaskList {
  constructor(api, getCatalog, onError) {
    this.api = api;
    this.getCatalog = getCatalog;
    this.onError = onError;
    this.uuids = [];
    this.rows = new Map();
    this.page = 0;
    this.expanded = null;
    this.body = h("div", { class: "task-list", id: "task-list" });
    this.count = h("span", { class: "muted", id: "task-count" });
    this.prev = h("button", { type: "button", class: "btn small", id: "page-prev", onclick: () => this.goto(this.page - 1) }, "‹ Newer");
    this.next = h("button", { type: "button", class: "btn small", id: "page-next", onclick: () => this.goto(this.page + 1) }, "Older ›");
    this.el = h("section", { class: "card tasks" },
      h("div", { class: "card-head" }, h("h2", {}, "Tasks"), this.count,
        h("div", { class: "pager" }, this.prev, this.next)),
      h("div", { class: "task-header" }, h("span", {}, "Status"), h("span", {}, "Name"), h("span", {}, "Images"),
        h("span", {}, "Progress"), h("span", {}, "Elapsed"), h("span", {}, "Created")),
      this.body);
    setInterval(() => { for (const row of this.rows.values()) row.tick(); }, 1000);
  }

  visible() {
    return this.uuids.slice(this.page * PAGE_SIZE, (this.page + 1) * PAGE_SIZE);
  }

  goto(page) {
    const last = Math.max(0, Math.ceil(this.uuids.length / PAGE_SIZE) - 1);
    this.page = Math.max(0, Math.min(last, page));
    this.render();
    this.refresh({ list: false });
  }

  // lay out the rows of the visible page, reusing the rows that stay
  render() {
    const visible = this.visible();
    const keep = new Set(visible);
    for (const [uuid, row] of this.rows) {
      if (!keep.has(uuid)) {
        row.el.remove();
        this.rows.delete(uuid);
      }
    }
    let previous = null;
    for (const uuid of visible) {
      let row = this.rows.get(uuid);
      if (!row) {
        row = new Row(this, uuid);
        this.rows.set(uuid, row);
        if (uuid === this.expanded) this.#open(row);
      }
      const expected = previous ? previous.nextSibling : this.body.firstChild;
      if (expected !== row.el) this.body.insertBefore(row.el, expected);
      previous = row.el;
    }
    const total = this.uuids.length;
    const from = total ? this.page * PAGE_SIZE + 1 : 0;
    setText(this.count, total ? `${from}–${from + visible.length - 1} of ${total}` : "no task yet");
    this.prev.disabled = this.page === 0;
    this.next.disabled = (this.page + 1) * PAGE_SIZE >= total;
    if (!total && !this.body.querySelector(".empty")) {
      this.body.append(h("div", { class: "empty muted" }, "No task yet: drop images in the New task panel to start one."));
    } else if (total) this.body.querySelector(".empty")?.remove();
  }

  async refresh({ list = true } = {}) {
    if (list) {
      const answer = await this.api.get("/task/list");
      this.uuids = answer.map((t) => t.uuid).reverse(); // the list is in creation order: newest first
      if (this.page * PAGE_SIZE >= this.uuids.length && this.page) this.page = Math.max(0, Math.ceil(this.uuids.length / PAGE_SIZE) - 1);
      this.render();
    }
    const now = Date.now();
    const due = [...this.rows.values()].filter((row) => !row.info || ACTIVE.has(row.info.status?.code)
      || now - row.fetchedAt > STALE_MS || row.uuid === this.expanded);
    await pool(due, PARALLEL, async (row) => {
      try {
        const info = await this.api.get(`/task/${row.uuid}/info`);
        if (this.rows.get(row.uuid) === row) row.update(info, Date.now());
      } catch (error) {
        if (!/not found/i.test(error.message)) throw error;
      }
    });
    const open = this.expanded && this.rows.get(this.expanded);
    if (open?.detail) await open.detail.poll();
  }

  toggle(uuid) {
    const row = this.rows.get(uuid);
    if (!row) return;
    if (this.expanded && this.expanded !== uuid) {
      const other = this.rows.get(this.expanded);
      if (other) this.#close(other);
    }
    if (row.detail) {
      this.#close(row);
      this.expanded = null;
      return;
    }
    this.expanded = uuid;
    this.#open(row);
    row.detail.poll().catch((e) => this.onError(e));
    this.api.get(`/task/${uuid}/info`).then((info) => row.update(info, Date.now())).catch((e) => this.onError(e));
  }

  show(uuid) {
    this.page = 0;
    if (!this.uuids.includes(uuid)) this.uuids.unshift(uuid);
    this.render();
    if (this.expanded !== uuid) this.toggle(uuid);
  }

  #open(row) {
    row.detail = new Detail(this, row);
    row.el.append(row.detail.el);
    row.el.classList.add("open");
    row.head.setAttribute("aria-expanded", "true");
    if (row.info) row.detail.update(row.info);
  }

  #close(row) {
    row.detail?.el.remove();
    row.detail = null;
    row.el.classList.remove("open");
    row.head.setAttribute("aria-expanded", "false");
  }

  async command(action, uuid) {
    try {
      if (action === "cancel") {
        await this.api.post("/task/cancel", { uuid });
      } else if (action === "remove") {
        const row = this.rows.get(uuid);
        const label = row?.info?.name || uuid;
        const ok = await dialog("Remove task?", [
          h("p", {}, "Remove ", h("strong", {}, label), " and delete its images and results? This cannot be undone."),
        ], [{ label: "Keep", value: "cancel", class: "btn" }, { label: "Remove", value: "remove", class: "btn danger" }]);
        if (ok !== "remove") return;
        await this.api.post("/task/remove", { uuid });
        this.uuids = this.uuids.filter((u) => u !== uuid);
        if (this.expanded === uuid) this.expanded = null;
        this.render();
      } else if (action === "restart") {
        await this.#restart(uuid);
      }
      await this.refresh();
    } catch (error) {
      this.onError(error);
    }
  }

  async #restart(uuid) {
    const row = this.rows.get(uuid);
    const catalog = await this.getCatalog();
    const given = (row?.info?.options || []).filter((o) => catalog.some((c) => c.name === o.name));
    const form = new OptionsForm(catalog, given);
    const note = h("div", { class: "form-message error", role: "alert" });
    let options = null;
    const choice = await dialog(`Restart ${row?.info?.name || uuid}`, [
      h("p", { class: "muted" }, "The task runs again with these options; its current results are deleted."),
      form.el, note,
    ], [
      { label: "Keep as is", value: "cancel", class: "btn" },
      {
        label: "Restart", value: "restart", class: "btn primary",
        before: async () => {
          options = form.values();
          if (options === null) {
            setText(note, "Some options are not valid: see the messages below each one.");
            return false;
          }
          try {
            await this.api.post("/task/restart", { uuid, options: JSON.stringify(options) });
            return true;
          } catch (error) {
            if (!form.showServerErrors(error.message)) setText(note, error.message);
            return false;
          }
        },
      },
    ]);
    return choice;
  }
}
