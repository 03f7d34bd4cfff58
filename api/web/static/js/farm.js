// The farm panel (GET /farm): warnings, queue depth per queue, and every live worker host.

import { clear, formatAgo, formatBytes, h, setText } from "./dom.js";

export class FarmPanel {
  constructor(api) {
    this.api = api;
    this.warnings = h("div", { class: "warnings", id: "farm-warnings", role: "alert" });
    this.queues = h("table", { class: "queues", id: "farm-queues" });
    this.workers = h("div", { class: "workers", id: "farm-workers" });
    this.workerCount = h("span", { class: "muted" });
    this.el = h("section", { class: "card farm", id: "farm" },
      h("div", { class: "card-head" }, h("h2", {}, "Farm"), this.workerCount),
      this.warnings,
      h("h3", {}, "Queues"), this.queues,
      h("h3", {}, "Workers"), this.workers);
    this.key = "";
  }

  async refresh() {
    const farm = await this.api.get("/farm");
    const key = JSON.stringify({ ...farm, now: 0, workers: farm.workers.map((w) => ({ ...w, lastBeat: 0, availableMemory: Math.round(w.availableMemory / 2 ** 24), freeDisk: Math.round(w.freeDisk / 2 ** 24) })) });
    this.farm = farm;
    if (key !== this.key) {
      this.key = key;
      this.#render(farm);
    }
    this.#ages(farm);
  }

  #render(farm) {
    clear(this.warnings);
    for (const text of farm.warnings) this.warnings.append(h("div", { class: "warning" }, text));
    setText(this.workerCount, `${farm.workers.length} live worker(s)`);

    clear(this.queues).append(h("thead", {}, h("tr", {},
      ["Queue", "Waiting", "Running", "Workers", "Slots"].map((t) => h("th", {}, t)))));
    const body = h("tbody", {});
    for (const [name, q] of Object.entries(farm.queues)) {
      body.append(h("tr", { dataset: { queue: name } },
        h("td", {}, name), h("td", { class: q.waiting ? "num hot" : "num" }, q.waiting + (q.deferred ? ` (+${q.deferred} deferred)` : "")),
        h("td", { class: "num" }, q.running), h("td", { class: "num" }, q.workers), h("td", { class: "num" }, q.slots)));
    }
    this.queues.append(body);

    clear(this.workers);
    if (!farm.workers.length) {
      this.workers.append(h("div", { class: "empty muted" }, "No live worker."));
      return;
    }
    for (const w of farm.workers) {
      const used = w.slotsUsed ?? (w.running || []).length;
      const memory = w.totalMemory ? `${formatBytes(w.totalMemory - w.availableMemory)} / ${formatBytes(w.totalMemory)}` : "–";
      this.workers.append(h("div", { class: `worker ${w.accepting === false ? "paused" : ""}`, dataset: { worker: w.name } },
        h("div", { class: "worker-head" },
          h("strong", {}, w.name), h("span", { class: `chip ${w.gpu ? "gpu" : ""}` }, w.gpu ? "GPU" : "CPU"),
          h("span", { class: "muted" }, w.host && w.host !== w.name ? w.host : "")),
        h("div", { class: "slots", title: `${used} of ${w.slots} slot(s) in use` },
          Array.from({ length: Math.max(w.slots, used) }, (_, i) => h("span", { class: i < used ? "slot used" : "slot" }))),
        h("dl", { class: "facts" },
          h("dt", {}, "Slots"), h("dd", {}, `${used} / ${w.slots} used`),
          h("dt", {}, "CPU"), h("dd", {}, `${w.cpuCores} cores`),
          h("dt", {}, "Memory"), h("dd", {}, memory),
          h("dt", {}, "Free disk"), h("dd", {}, formatBytes(w.freeDisk)),
          h("dt", {}, "Engine"), h("dd", {}, `${w.engine || "?"} ${w.engineVersion || ""}`),
          h("dt", {}, "Queues"), h("dd", {}, (w.queues || []).join(", ")),
          h("dt", {}, "Last seen"), h("dd", { "data-role": "seen", dataset: { beat: String(w.lastBeat || 0) } }, "")),
        w.note ? h("div", { class: "warning small" }, w.note) : null));
    }
  }

  #ages(farm) {
    for (const dd of this.workers.querySelectorAll("[data-role=seen]")) {
      const beat = Number(dd.dataset.beat);
      setText(dd, beat ? formatAgo(farm.now - beat) : "–");
    }
  }
}
